"""The ``execq`` command.

Exit codes: 0 success; 1 the command ran and its check failed; 2 bad usage or
configuration, or a service (Postgres, Redis, simulator) is unreachable. A
foreseeable mistake prints one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


class UserFacingError(click.ClickException):
    """A one-line error for the operator; exit code 2."""

    exit_code = EXIT_USAGE

    def show(self, file=None) -> None:  # noqa: ANN001 - click's signature
        click.echo(f"execq: {self.format_message()}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """execq: exactly-once order execution for crypto trading bots."""


def alembic_config():
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["configure_logging"] = False
    return config


def run_migrations(revision: str = "head") -> None:
    from alembic import command

    from workers.store.db import check_database

    check_database()
    command.upgrade(alembic_config(), revision)


@cli.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision to reach.")
def migrate(revision: str) -> None:
    """Apply the database migrations (same as `alembic upgrade head`)."""
    run_migrations(revision)
    click.echo(f"database migrated to {revision}")


@cli.command()
@click.option("--keep-running", is_flag=True, help="Leave the started services up at the end.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def demo(keep_running: bool, as_json: bool) -> None:
    """Bootstrap services, run the scripted scenario end to end and print what happened."""
    from workers.demo import run_demo

    sys.exit(run_demo(keep_running=keep_running, as_json=as_json))


def _translate_errors(function):
    """Turn foreseeable service and configuration failures into one-line errors."""

    def wrapper() -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        from workers.settings import SettingsError
        from workers.store.db import DatabaseUnavailable

        try:
            function(standalone_mode=True)
        except SettingsError as exc:
            click.echo(f"execq: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except DatabaseUnavailable as exc:
            click.echo(f"execq: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except RedisConnectionError as exc:
            from workers.settings import get_settings, redact_url

            click.echo(
                f"execq: cannot connect to REDIS_URL ({redact_url(get_settings().redis_url)}): {exc}",
                err=True,
            )
            sys.exit(EXIT_USAGE)

    return wrapper


main = _translate_errors(cli)


if __name__ == "__main__":
    main()
