"""Apply the Alembic migrations: what ``execq migrate`` and the harness run.

The migration scripts ship inside the package as ``workers.migrations`` (they live
in ``migrations/`` at the top of the repository), so an installed execq finds them
without a checkout or an ``alembic.ini``; ``alembic upgrade head`` in a checkout
reads the same scripts through ``alembic.ini``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any


def migrations_directory() -> str:
    """Where the installed migration scripts are (``env.py``, ``versions/``)."""
    location = resources.files("workers.migrations")
    if not location.joinpath("env.py").is_file():
        raise FileNotFoundError(f"no Alembic env.py in {location}")
    return str(location)


def alembic_config() -> Any:
    """Alembic's configuration for execq's migrations (logging left to the caller)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", migrations_directory())
    config.set_main_option("path_separator", "os")
    config.attributes["configure_logging"] = False
    return config


def run_migrations(revision: str = "head") -> None:
    """Bring the database at DATABASE_URL to ``revision``; raises DatabaseUnavailable."""
    from alembic import command

    from workers.store.db import check_database

    check_database()
    command.upgrade(alembic_config(), revision)
