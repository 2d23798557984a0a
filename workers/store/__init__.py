"""Postgres: SQLAlchemy models, the per-process engine, and the queries tasks need."""
