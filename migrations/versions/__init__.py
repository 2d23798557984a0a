"""The migration scripts, applied in the order their revisions chain."""
