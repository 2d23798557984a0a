"""The baseline task of ``execq bench``: Celery and the broker, no execq work at all."""

from __future__ import annotations

from workers.app import app


@app.task(name="noop")
def noop() -> None:
    """Do nothing. Its result is stored like every task's, so the baseline pays the same
    broker and result-backend round trips as an order task, and nothing else."""
    return None
