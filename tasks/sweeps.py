"""Tasks: sweeps (filled in by its issue)."""
