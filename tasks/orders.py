"""Tasks: orders (filled in by its issue)."""
