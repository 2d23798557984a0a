"""Tasks: positions (filled in by its issue)."""
