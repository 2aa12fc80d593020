"""pipelines room (see ARCHITECTURE.md)."""
