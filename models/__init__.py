"""models room (see ARCHITECTURE.md)."""
