"""execq workers: everything a worker process is made of.

``celery -A workers ...`` finds the app as ``workers.celery``. It is resolved
lazily so that pure modules (``workers.execution``) import without settings,
Redis or Celery.
"""

from __future__ import annotations

from typing import Any

from workers.exchange.lean_ccxt import install as _install_lean_ccxt

# Before anything imports ccxt: a worker needs two of its exchanges, not all.
_install_lean_ccxt()


def __getattr__(name: str) -> Any:
    if name == "celery":
        from workers.app import app

        return app
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
