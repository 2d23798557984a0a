"""The ``execq`` command.

Exit codes: 0 success; 1 the command ran and its check failed (for ``signal``:
the order was refused or did not fill); 2 bad usage or configuration, or a
service (Postgres, Redis, simulator) is unreachable; 3 ``signal --wait`` had no
result in time. A foreseeable mistake prints one line on stderr, never a traceback.
"""

from __future__ import annotations

import math
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import click

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
@click.option(
    "--stop", is_flag=True, help="Stop what an earlier --keep-running left up; drop its database."
)
@click.option("--short", is_flag=True, help="The short form of the scenario (as in the tests).")
@click.option(
    "--database",
    envvar="EXECQ_DEMO_DATABASE",
    default="execq_demo",
    show_default=True,
    help="The demo's own database on the DATABASE_URL server; created fresh, dropped at the end.",
)
@click.option(
    "--redis-url",
    envvar="EXECQ_DEMO_REDIS_URL",
    help="An empty Redis database to run on instead of a private redis-server.",
)
@click.option(
    "--sim-port",
    envvar="EXECQ_DEMO_SIM_PORT",
    type=click.IntRange(0, 65535),
    default=0,
    help="The simulator's port (default: a free one).",
)
@click.option(
    "--flower-port",
    envvar="EXECQ_DEMO_FLOWER_PORT",
    type=click.IntRange(0, 65535),
    default=0,
    help="Flower's port (default: a free one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def demo(
    keep_running: bool,
    stop: bool,
    short: bool,
    database: str,
    redis_url: str | None,
    sim_port: int,
    flower_port: int,
    as_json: bool,
) -> None:
    """Bootstrap services, run the scripted scenario end to end and print what happened.

    Runs on a private redis-server and a database of its own on the PostgreSQL
    server at DATABASE_URL; nothing of the user's is read or written.
    """
    from workers.harness.demo import run_demo, stop_demo

    if stop:
        sys.exit(stop_demo(database))
    sys.exit(
        run_demo(
            keep_running=keep_running,
            as_json=as_json,
            short=True if short else None,
            database=database,
            redis_url=redis_url,
            sim_port=sim_port,
            flower_port=flower_port,
        )
    )


#: ``execq signal``: no result within ``--wait``; the order may still execute.
EXIT_NO_RESULT = 3
# Statuses a limit order ends its task with when it rests on the book.
RESTING_STATUSES = ("open", "partially_filled")


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
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=0,
    help="Wait this long for the result.",
)
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
    """Send one order through the outbox, e.g. `execq signal binance buy 0.3 ETH/USDT:USDT`.

    Prints the task id (and with --wait the order result). Exit codes: 0 enqueued
    (without --wait), or filled, or for a limit order resting on the book; 1 refused
    (an invalid argument, a signal id already used for another order, the kill
    switch) or ended without a fill, with the reason on stderr; 2 bad usage or a
    service unreachable; 3 no result within --wait (the order may still execute).
    """
    import uuid

    from workers.execution.signal import LIMIT_TASK, MARKET_TASK, SignalRefused
    from workers.producer import default_producer, order_kwargs

    signal_id = signal_id or f"cli-{uuid.uuid4().hex[:20]}"
    kwargs = order_kwargs(
        signal_id, exchange, symbol, side, amount, reduce_only=reduce_only, purpose=purpose
    )
    task_name = MARKET_TASK
    if limit_price is not None:
        task_name = LIMIT_TASK
        kwargs.update(price=limit_price, time_in_force=tif)
    body: dict = {"task_id": None, "signal_id": signal_id}
    producer = default_producer()
    try:
        arguments = producer.check(task_name, kwargs)
        require_broker()
        result = producer.send(task_name, kwargs)
    except SignalRefused as refusal:
        _signal_failed(body | {"refused": refusal.reason}, f"refused: {refusal.reason}", as_json)
    body["task_id"] = result.id
    if wait_s <= 0:
        if as_json:
            _json_out(body)
        else:
            click.echo(result.id)
        return
    from celery.exceptions import TimeoutError as ResultTimeout

    try:
        outcome = result.get(timeout=wait_s, propagate=False)
    except ResultTimeout:
        # Stop listening for it now: left to the interpreter's exit, it prints a traceback.
        result.backend.remove_pending_result(result)
        _signal_failed(body, _no_result_yet(arguments, wait_s), as_json, EXIT_NO_RESULT)
    if isinstance(outcome, BaseException):
        _signal_failed(body | {"refused": str(outcome)}, f"refused: {outcome}", as_json)
    body["result"] = outcome
    if as_json:
        _json_out(body)
    else:
        click.echo(result.id)
        _json_out(outcome)
    status = outcome.get("status")
    if status == "filled" or (task_name == LIMIT_TASK and status in RESTING_STATUSES):
        return
    why = outcome.get("error") or f"filled {outcome.get('filled')} of {outcome.get('amount')}"
    click.echo(f"execq: order {status}: {why}", err=True)
    sys.exit(EXIT_CHECK_FAILED)


def _no_result_yet(arguments: Any, wait_s: float) -> str:
    from workers.store.orders import load_order

    order = load_order(arguments.client_order_id)
    state = "not recorded by a worker yet" if order is None else f"{order.status}"
    return (
        f"no result within {wait_s:g}s; the order is {state} and may still execute "
        f"(signal {arguments.signal_id}, client order id {arguments.client_order_id})"
    )


def _signal_failed(body: dict, line: str, as_json: bool, code: int = EXIT_CHECK_FAILED) -> NoReturn:
    if as_json:
        _json_out(body)
    click.echo(f"execq: {line}", err=True)
    sys.exit(code)


@cli.command("kill-switch")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--reason", default="manual", show_default=True)
def kill_switch(state: str, reason: str) -> None:
    """Block (on) or allow (off) every order that is not reduce-only, cluster-wide.

    The state is kept in Postgres with its event and survives a Redis that loses it.
    """
    from workers.coordination import set_kill_switch

    new_state = set_kill_switch(state == "on", reason)
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
    stream_rows = _stream_rows(redis, [a.name for a in settings.accounts])
    payload = {
        "accounts": [
            {"name": a.name, "exchange": a.ccxt_class, "mode": a.mode} for a in settings.accounts
        ],
        "kill_switch": {
            "on": kill.on,
            "reason": kill.reason,
            "since": kill.since,
            "set_by": kill.set_by,
        },
        "last_sweeps": sweeps,
        "open_positions": positions,
        "aged_positions": aged,
        "orders_in_flight": {"by_status": counts, "orders": in_flight},
        "streams": stream_rows,
    }
    if as_json:
        _json_out(payload)
        return
    accounts = ", ".join(f"{a['name']} ({a['exchange']}, {a['mode']})" for a in payload["accounts"])
    click.echo(f"accounts: {accounts}")
    kill_line = "off"
    if kill.on:
        since = f" since {kill.since:%Y-%m-%d %H:%M:%S}" if kill.since else ""
        kill_line = f"ON{since} ({kill.reason}; by {kill.set_by})"
    click.echo(f"kill switch: {kill_line}")
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
    click.echo(f"\nstreams ({len(stream_rows)})")
    click.echo(
        render(
            ["account", "stream", "state", "since", "age s", "reconnects", "holder", "detail"],
            [
                [
                    r["account"],
                    r["stream"],
                    r["state"],
                    r["since"],
                    r["age_s"],
                    r["reconnects"],
                    r["holder"],
                    r["detail"],
                ]
                for r in stream_rows
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


def _stream_rows(redis: Any, accounts: list[str]) -> list[dict[str, Any]]:
    """Each stream's state as its holder wrote it, with its age (seconds since it last
    showed it was alive; None when never or not reported) and reconnect count."""
    import json
    import time

    from workers import redis_keys
    from workers.streams.health import STREAMS, stream_ages

    with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(redis_keys.STREAMS_STATE)
        pipe.hgetall(redis_keys.STREAMS_LAST_ALIVE)
        pipe.hgetall(redis_keys.STREAMS_RECONNECTS)
        states, alive, reconnects = pipe.execute()
    ages = stream_ages(alive, time.time())
    rows = []
    for account in accounts:
        for stream in STREAMS:
            field = redis_keys.stream_field(account, stream)
            state = json.loads(states[field]) if field in states else None
            age_s = ages.get((account, stream))
            rows.append(
                {
                    "account": account,
                    "stream": stream,
                    "state": state["state"] if state else "not held",
                    "since": state["since"] if state else None,
                    "detail": state["detail"] if state else "",
                    "holder": state["holder"] if state else None,
                    "age_s": None if age_s is None else round(age_s, 1),
                    "reconnects": int(reconnects.get(field, 0)),
                }
            )
    return rows


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


# A century: further back than any aged position, and a window Python's dates can still hold.
MAX_STATS_DAYS = 36_500


class Days(click.ParamType):
    """A positive, finite number of days; anything else is a one-line usage error."""

    name = "days"

    def convert(self, value: object, param: object, ctx: object) -> float:
        try:
            days = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            days = math.nan
        if not (math.isfinite(days) and 0 < days <= MAX_STATS_DAYS):
            raise UserFacingError(
                f"--days must be a number of days above 0 and at most {MAX_STATS_DAYS}, "
                f"got {value!r}"
            )
        return days


@cli.command()
@click.option("--days", type=Days(), default=7, show_default=True)
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


@cli.command()
@click.option("--signal-id", help="The signal whose order to cancel (with --leg).")
@click.option("--leg", default="open", show_default=True, help="The signal's leg.")
@click.option("--client-order-id", help="The order to cancel, by execq's client order id.")
@click.option("--exchange", help="Cancel every open order of this account (with --symbol: of it).")
@click.option("--symbol", help="With --exchange: only this symbol's open orders.")
@click.option(
    "--wait", "wait_s", type=float, default=60, show_default=True, help="Seconds to wait."
)
@click.option("--json", "as_json", is_flag=True)
def cancel(
    signal_id: str | None,
    leg: str,
    client_order_id: str | None,
    exchange: str | None,
    symbol: str | None,
    wait_s: float,
    as_json: bool,
) -> None:
    """Cancel an order, or every open order of an account (execq's and others).

    Exactly once, like a create: a cancel that comes after the fill records the fill.
    Exit 0 when the order ended (canceled, or filled before the cancel), 1 when the
    cancel was refused (no such order) or the order is still working.
    """
    from celery.exceptions import TimeoutError as CeleryTimeout

    from workers.app import app

    targets = [client_order_id is not None, signal_id is not None, exchange is not None]
    if sum(targets) != 1:
        raise click.UsageError("give one of --client-order-id, --signal-id or --exchange")
    if symbol is not None and exchange is None:
        raise click.UsageError("--symbol needs --exchange")
    require_broker()
    kwargs = {
        "client_order_id": client_order_id,
        "signal_id": signal_id,
        "leg": leg,
        "exchange": exchange,
        "symbol": symbol,
    }
    result = app.send_task("cancel_order", kwargs={k: v for k, v in kwargs.items() if v})
    try:
        answer = result.get(timeout=wait_s)
    except CeleryTimeout:
        click.echo(f"execq: no answer within {wait_s:g}s; the cancel may still happen", err=True)
        sys.exit(EXIT_CHECK_FAILED)
    except Exception as exc:  # noqa: BLE001 - the task's failure is shown, one line
        click.echo(f"execq: {' '.join(str(exc).split())}", err=True)
        sys.exit(EXIT_CHECK_FAILED)
    if as_json:
        _json_out(answer)
    elif "canceled" in answer:
        for row in answer["canceled"]:
            click.echo(
                f"{row['symbol']} {row['client_order_id'] or row['exchange_order_id']}: "
                f"{row['status']}" + (f" ({row['error']})" if row["error"] else "")
            )
    else:
        click.echo(f"{answer['client_order_id']}: {answer['status']}")
    working = ("open", "partially_filled", "unknown", "submitting", "intent")
    rows = answer.get("canceled", [answer])
    if any(row["status"] in working or row["status"] == "error" for row in rows):
        sys.exit(EXIT_CHECK_FAILED)


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
@click.option(
    "--account",
    "accounts",
    multiple=True,
    help="Hold only this account's streams (repeatable; default: every account).",
)
def streams(accounts: tuple[str, ...]) -> None:
    """Hold the exchanges' WebSocket streams (orders, fills, positions, prices) until SIGTERM.

    One holder per account across the cluster (a Redis lease): start a second process
    as a standby. Accounts whose exchange has no streams are polled as before.
    """
    from workers.api.server import configure_logging
    from workers.settings import get_settings
    from workers.streams.holder import run

    settings = get_settings()
    known = {account.name for account in settings.accounts}
    unknown = sorted(set(accounts) - known)
    if unknown:
        raise UserFacingError(
            f"no account named {', '.join(unknown)} (configured: {', '.join(sorted(known))})"
        )
    require_broker()
    configure_logging()
    run(settings, accounts)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--seed", type=int, help="Seed for faults and price walks.")
@click.option("--ws-port", type=click.IntRange(0, 65535), help="Serve the WebSocket streams here.")
def sim(host: str, port: int, seed: int | None, ws_port: int | None) -> None:
    """Run the exchange simulator (Binance USDⓈ-M and Bybit v5) in the foreground."""
    from exchange_sim.server import main as run_simulator

    run_simulator(host, port, seed, ws_port)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--workers",
    "worker_count",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes.",
)
def api(host: str, port: int, worker_count: int) -> None:
    """Serve the HTTP API: signals over HTTP into the outbox, TradingView alerts, /docs.

    Keys come from EXECQ_API_KEYS (docs/api.md). Plain HTTP: put a TLS proxy in front
    to reach it from another host.
    """
    from workers.api.server import serve

    serve(host, port, worker_count)


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
@click.option(
    "--stream-positions",
    type=click.IntRange(1, 200),
    default=20,
    show_default=True,
    help="Aged positions whose targets the price crosses, with and without the stream holder.",
)
@click.option(
    "--stream-orders",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Bybit market orders whose REST requests are counted, with and without the holder.",
)
@click.option(
    "--redis-url", help="An empty Redis database to run on instead of a private redis-server."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object last.")
def bench_flows(
    orders: int,
    latency_ms: int,
    sweep_positions: int,
    stream_positions: int,
    stream_orders: int,
    redis_url: str | None,
    as_json: bool,
) -> None:
    """Verification, aged-close (also with the sweeping worker killed), sweep, kill-recovery,
    liquidation and stream figures.

    Exits 1 when a stream target (price crossing -> close accepted p99, REST requests of
    a Bybit order beyond its create) is missed."""
    import json
    import tempfile

    from workers.harness.bench import RedisNotEmpty
    from workers.harness.bench_flows import run_flow_bench
    from workers.harness.services import ServicesUnavailable

    with tempfile.TemporaryDirectory(prefix="execq-flows-") as workdir:
        try:
            result = run_flow_bench(
                Path(workdir),
                orders=orders,
                latency_ms=latency_ms,
                sweep_positions=sweep_positions,
                stream_positions=stream_positions,
                stream_orders=stream_orders,
                redis_url=redis_url,
            )
        except (ServicesUnavailable, RedisNotEmpty) as exc:
            raise UserFacingError(str(exc)) from None
    click.echo(json.dumps(result, default=str, indent=None if as_json else 2))
    targets = (result.get("streams") or {}).get("targets", {})
    if not all(target["met"] for target in targets.values()):
        raise SystemExit(1)


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
