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


@cli.command()
@click.argument("exchange")
@click.argument("side", type=click.Choice(["buy", "sell"]))
@click.argument("amount")
@click.argument("symbol")
@click.option("--signal-id", help="Idempotency key; a generated one when omitted.")
@click.option("--limit", "limit_price", help="Limit price (default: market order).")
@click.option("--tif", type=click.Choice(["GTC", "IOC"]), default="GTC", show_default=True)
@click.option("--reduce-only", is_flag=True, help="Only reduce an existing position.")
@click.option("--purpose", default="open", show_default=True)
@click.option("--wait", "wait_s", type=float, default=0, help="Wait this long for the result.")
@click.option("--json", "as_json", is_flag=True)
def signal(
    exchange: str,
    side: str,
    amount: str,
    symbol: str,
    signal_id: str | None,
    limit_price: str | None,
    tif: str,
    reduce_only: bool,
    purpose: str,
    wait_s: float,
    as_json: bool,
) -> None:
    """Enqueue one order, e.g. `execq signal binance buy 0.3 ETH/USDT:USDT`; prints the task id."""
    import json
    import uuid

    from workers.producer import submit_limit_order, submit_market_order

    signal_id = signal_id or f"cli-{uuid.uuid4().hex[:20]}"
    if limit_price is None:
        result = submit_market_order(
            signal_id, exchange, symbol, side, amount, reduce_only=reduce_only, purpose=purpose
        )
    else:
        result = submit_limit_order(
            signal_id,
            exchange,
            symbol,
            side,
            amount,
            limit_price,
            time_in_force=tif,
            reduce_only=reduce_only,
            purpose=purpose,
        )
    body: dict = {"task_id": result.id, "signal_id": signal_id}
    if wait_s > 0:
        body["result"] = result.get(timeout=wait_s, propagate=False)
        if isinstance(body["result"], BaseException):
            body["result"] = {"error": str(body["result"])}
    if as_json:
        click.echo(json.dumps(body, default=str))
    else:
        click.echo(result.id)
        if "result" in body:
            click.echo(json.dumps(body["result"], default=str))


@cli.command("kill-switch")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--reason", default="manual", show_default=True)
def kill_switch(state: str, reason: str) -> None:
    """Block (on) or allow (off) every order that is not reduce-only, cluster-wide."""
    from workers.coordination import set_kill_switch
    from workers.store.db import session_scope
    from workers.store.events import record_event

    new_state = set_kill_switch(state == "on", reason)
    with session_scope() as session:
        record_event(
            session, f"kill_switch_{state}", payload={"reason": reason if new_state.on else None}
        )
    click.echo(f"kill switch {state}" + (f" ({reason})" if new_state.on else ""))


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
