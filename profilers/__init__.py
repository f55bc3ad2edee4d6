"""Reserved for later issues (see ARCHITECTURE.md)."""
