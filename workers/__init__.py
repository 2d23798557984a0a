"""execq workers: everything a worker process is made of.

``celery -A workers ...`` finds the app as ``workers.celery``. It is resolved
lazily so that pure modules (``workers.execution``) import without settings,
Redis or Celery.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "celery":
        from workers.app import app

        return app
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
