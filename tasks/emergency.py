"""Tasks: emergency (filled in by its issue)."""
