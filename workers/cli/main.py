"""The ``execq`` command.

Exit codes: 0 success; 1 the command ran and its check failed; 2 bad usage or
configuration, or a service (Postgres, Redis, simulator) is unreachable. A
foreseeable mistake prints one line on stderr, never a traceback.
"""

from __future__ import annotations

import re
import sys
from decimal import Decimal
from pathlib import Path

import click

SYMBOL = re.compile(r"^[A-Z0-9]{2,20}/[A-Z0-9]{2,10}:[A-Z0-9]{2,10}$")

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


@cli.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision to reach.")
def migrate(revision: str) -> None:
    """Apply the database migrations (same as `alembic upgrade head`)."""
    from workers.store.migrate import run_migrations

    run_migrations(revision)
    click.echo(f"database migrated to {revision}")


@cli.command()
@click.option("--keep-running", is_flag=True, help="Leave the started services up at the end.")
@click.option("--stop", is_flag=True, help="Stop what an earlier --keep-running left up.")
@click.option("--short", is_flag=True, help="The short form of the scenario (as in the tests).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def demo(keep_running: bool, stop: bool, short: bool, as_json: bool) -> None:
    """Bootstrap services, run the scripted scenario end to end and print what happened."""
    from workers.harness.demo import run_demo, stop_demo

    if stop:
        sys.exit(stop_demo())
    sys.exit(run_demo(keep_running=keep_running, as_json=as_json, short=True if short else None))


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

    from workers.execution.validation import InvalidSignal, parse_decimal
    from workers.producer import submit_limit_order, submit_market_order
    from workers.settings import get_settings

    names = [account.name for account in get_settings().accounts]
    if exchange not in names:
        raise UserFacingError(f"unknown account {exchange!r}; configured: {', '.join(names)}")
    if not SYMBOL.match(symbol):
        raise UserFacingError(f"symbol {symbol!r} is not a ccxt swap symbol like ETH/USDT:USDT")
    try:
        for name, value in (("amount", amount), ("--limit", limit_price)):
            if value is not None and parse_decimal(name, value) <= 0:
                raise UserFacingError(f"{name} must be positive, got {value!r}")
    except InvalidSignal as invalid:
        raise UserFacingError(str(invalid)) from None
    require_broker()
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


def require_broker() -> None:
    """Fail with one line (exit 2) before sending anything when Redis is down."""
    from workers.redis_client import get_redis

    get_redis().ping()


def _json_out(payload: object) -> None:
    import json

    click.echo(json.dumps(payload, default=str))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of tables.")
def status(as_json: bool) -> None:
    """Accounts, open positions, aged positions by phase, orders in flight, kill switch, sweeps."""
    from workers import redis_keys
    from workers.cli.tables import render
    from workers.coordination import kill_switch_state
    from workers.redis_client import get_redis
    from workers.settings import get_settings
    from workers.store import reports

    settings = get_settings()
    redis = get_redis()
    kill = kill_switch_state()
    sweeps = {name: redis.get(redis_keys.sweep_last_run(name)) for name in ("aged", "recovery")}
    positions = reports.open_positions()
    aged = reports.active_aged()
    for row in aged:
        price = redis.get(redis_keys.price_cache(row["account"], row["symbol"]))
        row["price"] = None if price is None else Decimal(price)
        row["distance_percent"] = (
            None
            if row["price"] is None or not row["target_price"]
            else round((row["target_price"] - row["price"]) / row["price"] * 100, 3)
        )
    counts, in_flight = reports.orders_in_flight()
    payload = {
        "accounts": [
            {"name": a.name, "exchange": a.ccxt_class, "mode": a.mode} for a in settings.accounts
        ],
        "kill_switch": {"on": kill.on, "reason": kill.reason, "since": kill.since},
        "last_sweeps": sweeps,
        "open_positions": positions,
        "aged_positions": aged,
        "orders_in_flight": {"by_status": counts, "orders": in_flight},
    }
    if as_json:
        _json_out(payload)
        return
    accounts = ", ".join(f"{a['name']} ({a['exchange']}, {a['mode']})" for a in payload["accounts"])
    click.echo(f"accounts: {accounts}")
    click.echo(
        "kill switch: "
        + (f"ON since {kill.since:%Y-%m-%d %H:%M:%S} ({kill.reason})" if kill.on else "off")
    )
    click.echo(
        "last sweeps: " + ", ".join(f"{name} {value or 'never'}" for name, value in sweeps.items())
    )
    click.echo(f"\nopen positions ({len(positions)})")
    click.echo(
        render(
            ["id", "account", "symbol", "side", "size", "entry", "opened", "verified"],
            [
                [
                    p["id"],
                    p["account"],
                    p["symbol"],
                    p["side"],
                    p["size"],
                    p["entry_price"],
                    p["opened_at"],
                    p["verification"],
                ]
                for p in positions
            ],
        )
    )
    click.echo(f"\naged positions ({len(aged)})")
    click.echo(
        render(
            [
                "aged",
                "account",
                "symbol",
                "side",
                "phase",
                "target",
                "price",
                "dist%",
                "tol%",
                "tries",
            ],
            [
                [
                    a["id"],
                    a["account"],
                    a["symbol"],
                    a["side"],
                    a["phase"] + ("*" if a["status"] == "closing" else ""),
                    a["target_price"],
                    a["price"],
                    a["distance_percent"],
                    a["loss_tolerance_percent"],
                    a["attempts"],
                ]
                for a in aged
            ],
        )
    )
    click.echo(f"\norders in flight: {counts or 'none'}")
    if in_flight:
        click.echo(
            render(
                ["client order id", "account", "symbol", "side", "amount", "status", "updated"],
                [
                    [
                        o["client_order_id"],
                        o["account"],
                        o["symbol"],
                        o["side"],
                        o["amount"],
                        o["status"],
                        o["updated_at"],
                    ]
                    for o in in_flight
                ],
            )
        )


@cli.command()
@click.option("--type", "types", multiple=True, help="Event type (repeatable).")
@click.option("--symbol")
@click.option("--order", help="Order id or client order id.")
@click.option("--aged", "aged_id", type=int, help="Aged position id.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--follow", is_flag=True, help="Keep printing new events as they arrive.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(
    types: tuple[str, ...],
    symbol: str | None,
    order: str | None,
    aged_id: int | None,
    limit: int,
    follow: bool,
    as_json: bool,
) -> None:
    """Recent events, oldest first; filter by type, symbol, order or aged id."""
    import time

    from workers.store.reports import recent_events

    def show(rows: list[dict]) -> None:
        for row in rows:
            if as_json:
                _json_out(row)
                continue
            ids = " ".join(
                f"{key}={row[key]}"
                for key in ("account", "symbol", "client_order_id", "aged_id")
                if row[key] is not None
            )
            extra = f" [{row['error_class']}]" if row["error_class"] else ""
            click.echo(
                f"{row['id']:>7} {row['occurred_at']:%H:%M:%S.%f} "[:25]
                + f"{row['type']:<24} {ids}{extra}"
            )

    filters = dict(types=types, symbol=symbol, order=order, aged_id=aged_id)
    rows = recent_events(**filters, limit=limit)
    show(rows)
    last_id = rows[-1]["id"] if rows else 0
    while follow:
        # Polling the append-only table is the follow mechanism; one query a second.
        time.sleep(1.0)
        rows = recent_events(**filters, after_id=last_id, limit=1000)
        show(rows)
        if rows:
            last_id = rows[-1]["id"]


@cli.command()
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=7, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def stats(days: float, as_json: bool) -> None:
    """Aged-position statistics: success rate, attempts, time to close, closes by reason."""
    from workers.cli.tables import render
    from workers.store.reports import aged_statistics

    report = aged_statistics(days)
    if as_json:
        _json_out(report)
        return
    click.echo(f"aged positions in the last {days:g} days: {report['aged_positions']}")
    click.echo(
        render(
            ["figure", "value"],
            [
                ["closed", report["closed"]],
                ["success rate (closes / attempts)", report["success_rate"]],
                ["average attempts per close", report["average_attempts"]],
                ["average close after target (ms)", report["average_close_after_target_ms"]],
                ["realized PnL of closes", report["realized_pnl"]],
                ["alerts", report["alerts"]],
            ],
        )
    )
    if report["by_status"]:
        click.echo("\nby status: " + ", ".join(f"{k} {v}" for k, v in report["by_status"].items()))
    if report["closes_by_reason"]:
        click.echo(
            "closes by reason: "
            + ", ".join(f"{k} {v}" for k, v in report["closes_by_reason"].items())
        )


@cli.command("liquidate-all")
@click.option("--reason", required=True, help="Why; recorded with the kill switch and summary.")
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=180,
    show_default=True,
    help="Seconds to wait for the summary (0: just enqueue).",
)
@click.option("--json", "as_json", is_flag=True)
def liquidate_all(reason: str, wait_s: float, as_json: bool) -> None:
    """Kill switch on, close every position reduce-only, verify flat, print the summary."""
    from workers.app import app

    require_broker()
    result = app.send_task("emergency_liquidate_all", kwargs={"reason": reason})
    if wait_s <= 0:
        click.echo(result.id)
        return
    summary = result.get(timeout=wait_s)
    if as_json:
        _json_out(summary)
    else:
        click.echo(
            f"liquidation {summary['liquidation_id']}: {summary['closed']}/{summary['total']} "
            f"closed, {summary['failed']} failed in {summary['seconds']}s; kill switch stays on "
            "until `execq kill-switch off`"
        )
    if summary["failed"]:
        sys.exit(EXIT_CHECK_FAILED)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--seed", type=int, help="Seed for faults and price walks.")
def sim(host: str, port: int, seed: int | None) -> None:
    """Run the exchange simulator (Binance USDⓈ-M and Bybit v5) in the foreground."""
    from exchange_sim.server import main as run_simulator

    run_simulator(host, port, seed)


@cli.command("bench-flows")
@click.option("--orders", type=click.IntRange(2, 5000), default=100, show_default=True)
@click.option(
    "--latency-ms",
    type=click.IntRange(0, 5000),
    default=50,
    show_default=True,
    help="Exchange latency injected during the liquidation phase.",
)
@click.option("--sweep-positions", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object last.")
def bench_flows(orders: int, latency_ms: int, sweep_positions: int, as_json: bool) -> None:
    """Verification, aged-close (also with the sweeping worker killed), sweep, kill-recovery
    and liquidation figures."""
    import json
    import tempfile

    from workers.harness.bench_flows import run_flow_bench

    with tempfile.TemporaryDirectory(prefix="execq-flows-") as workdir:
        result = run_flow_bench(
            Path(workdir), orders=orders, latency_ms=latency_ms, sweep_positions=sweep_positions
        )
    click.echo(json.dumps(result, default=str, indent=None if as_json else 2))


def _register_harnesses() -> None:
    from workers.cli.harness_commands import bench, chaos

    cli.add_command(bench)
    cli.add_command(chaos)


_register_harnesses()


def _translate_errors(function):
    """Turn foreseeable service and configuration failures into one-line errors."""

    def wrapper() -> None:
        from kombu.exceptions import OperationalError as KombuOperationalError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from sqlalchemy.exc import OperationalError as SqlOperationalError

        from workers.settings import SettingsError
        from workers.store.db import DatabaseUnavailable, unavailable

        try:
            function(standalone_mode=True)
        except SettingsError as exc:
            click.echo(f"execq: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except DatabaseUnavailable as exc:
            click.echo(f"execq: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except SqlOperationalError as exc:
            click.echo(f"execq: {unavailable(exc)}", err=True)
            sys.exit(EXIT_USAGE)
        except KombuOperationalError as exc:
            from workers.settings import get_settings, redact_url

            click.echo(
                f"execq: cannot reach the broker at REDIS_URL "
                f"({redact_url(get_settings().redis_url)}): {exc}",
                err=True,
            )
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
