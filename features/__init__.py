"""features room (see ARCHITECTURE.md)."""
