"""Alembic migrations of the execq schema; shipped in the package as ``workers.migrations``."""
