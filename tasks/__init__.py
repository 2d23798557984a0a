"""Thin Celery tasks: load state, call decisions in ``workers.execution``, do I/O, record events."""
