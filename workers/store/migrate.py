"""Apply the Alembic migrations: what ``execq migrate`` and the harness run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def alembic_config() -> Any:
    """Alembic's configuration for execq's migrations (logging left to the caller)."""
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["configure_logging"] = False
    return config


def run_migrations(revision: str = "head") -> None:
    """Bring the database at DATABASE_URL to ``revision``; raises DatabaseUnavailable."""
    from alembic import command

    from workers.store.db import check_database

    check_database()
    command.upgrade(alembic_config(), revision)
