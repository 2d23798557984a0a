"""``execq bench-flows``: the figures the order benchmark does not cover.

- ``verify``: create response -> verification verdict, p50/p99 per exchange,
  and the exchange calls verification cost (order fetches, positions reads);
- ``liquidation``: 20 positions over two exchanges closed at an injected
  exchange latency (seed 002 quotes 1-2 s per position, sequentially);
- ``aged_close``: the price crosses the target -> the close order is accepted
  by the exchange, p50/p99, with the default 2 s sweep interval; beside it
  what execq recorded (``close_duration_ms``: from the first price a sweep
  saw at or past the target to the close's fill), which leaves out the time
  before the sweep looked;
- ``aged_sweep_kill``: the worker running an aged sweep (held in its tickers
  call by a latency fault) is SIGKILLed as the price crosses a target ->
  the close, with another worker running (the seeds ask < 5 s after the
  target is reached);
- ``sweep``: one aged sweep over 1,000 open positions on 100 accounts across
  two exchanges (first run detects them all, second is the steady state);
- ``kill_recovery``: a worker SIGKILLed with orders in doubt -> every order
  terminal again, with the default 60 s recovery interval;
- ``streams``: what the stream holder (``execq streams``) changes, each figure
  measured without it first and then with it, in the same run: the price
  crossing an aged target -> the close accepted by the exchange, one crossing at a
  time (target p99 <= 300 ms with healthy streams; the sweep alone is bounded by
  its 2 s interval), with what claimed each close (``trigger``); and the REST
  requests a Bybit market order costs beyond its create, from the simulator's
  per-operation counts (target 0 with healthy streams: the fill and the position
  arrive pushed).

Runs on a private ``redis-server`` and a scratch PostgreSQL database with its own
simulator, workers and beat, like ``execq bench``; nothing here is a test (no
thresholds asserted).
"""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import text

from workers.harness.bench import client_app, percentile, process_env, scratch
from workers.harness.polling import wait_for
from workers.harness.sim_client import SimulatorClient
from workers.harness.stack import Stack, streams_live
from workers.redis_client import get_redis

SYMBOLS = ["BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "LINK", "AVAX", "LTC", "BNB"]
AMOUNTS = {
    "BTC": "0.01",
    "ETH": "0.1",
    "SOL": "1",
    "XRP": "10",
    "DOGE": "100",
    "ADA": "20",
    "LINK": "1",
    "AVAX": "1",
    "LTC": "0.3",
    "BNB": "0.1",
}
# Aged settings for the close-latency phase: aged after 1 s, and a long grace so the
# breakeven target holds still while the price is moved across it.
AGED_ENV = {"EXECQ_AGED__MAX_AGE_S": "1", "EXECQ_AGED__GRACE_PERIOD_S": "600"}
PRICE_TO_CLOSE_P99_TARGET_MS = 300.0
BYBIT_REQUESTS_BEYOND_CREATE_TARGET = 0.0
# The exchanges the simulator serves streams for.
STREAM_EXCHANGES = ("binance", "bybit")
PHASES = ("verify", "liquidation", "aged_close", "aged_sweep_kill", "kill_recovery", "streams")


def _wait(condition, timeout_s: float, what: str, interval_s: float = 0.2):
    return wait_for(
        condition,
        timeout_s,
        interval_s=interval_s,
        error=lambda _: TimeoutError(f"flow bench: {what} not reached within {timeout_s:.0f}s"),
    )


def _rows(sql: str, **params: Any) -> list[Any]:
    from workers.store.db import get_engine

    with get_engine().connect() as connection:
        return list(connection.execute(text(sql), params))


def _ms(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50_ms": None if not values else round(percentile(values, 0.5), 1),
        "p99_ms": None if not values else round(percentile(values, 0.99), 1),
    }


def _send_open(app, signal_id: str, exchange: str, base: str, side: str = "buy") -> None:
    app.send_task(
        "execute_market_order",
        kwargs={
            "signal_id": signal_id,
            "exchange": exchange,
            "symbol": f"{base}/USDT:USDT",
            "side": side,
            "amount": AMOUNTS[base],
            "reduce_only": False,
            "purpose": "open",
        },
    )


def measure_verify(app, sim: SimulatorClient, orders: int) -> dict[str, Any]:
    sim.reset()
    for index in range(orders):
        exchange = ("binance", "bybit")[index % 2]
        _send_open(app, f"flow-verify-{index}", exchange, SYMBOLS[(index // 2) % len(SYMBOLS)])
    verified_sql = (
        "SELECT count(*) FROM events WHERE type = 'verification_verified' "
        "AND signal_id LIKE 'flow-verify-%'"
    )
    try:
        _wait(lambda: _rows(verified_sql)[0][0] >= orders, 180, "every order verified")
    except TimeoutError as exc:
        states = _rows("SELECT status, verification, count(*) FROM orders GROUP BY 1, 2")
        events = _rows("SELECT type, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC LIMIT 25")
        raise TimeoutError(f"{exc}: orders {states}; events {events}") from None
    rows = _rows(
        "SELECT o.account, EXTRACT(EPOCH FROM (e.occurred_at - o.acked_at)) * 1000 "
        "FROM orders o JOIN events e ON e.order_id = o.id AND e.type = 'verification_verified' "
        "WHERE o.signal_id LIKE 'flow-verify-%'"
    )
    stats = sim.stats()
    result: dict[str, Any] = {}
    for exchange in ("binance", "bybit"):
        creates = stats.get(exchange, {}).get("create_order", 0)
        result[exchange] = {
            **_ms([float(ms) for account, ms in rows if account == exchange]),
            "creates": creates,
            "order_fetches_per_order": round(
                (
                    stats.get(exchange, {}).get("fetch_order", 0)
                    + stats.get(exchange, {}).get("open_orders", 0)
                )
                / max(creates, 1),
                2,
            ),
            "positions_reads": stats.get(exchange, {}).get("positions", 0),
        }
    return result


def measure_liquidation(app, sim: SimulatorClient, latency_ms: int) -> dict[str, Any]:
    sim.reset()
    for exchange in ("binance", "bybit"):
        for base in SYMBOLS:
            sim.set_position(exchange, f"{base}/USDT:USDT", AMOUNTS[base])
    app.send_task("recovery_sweep").get(timeout=120)
    sim.faults({"rules": [{"kind": "latency", "latency_ms": latency_ms}]})
    started = time.monotonic()
    summary = app.send_task("emergency_liquidate_all", kwargs={"reason": "flow bench"}).get(
        timeout=300
    )
    seconds = time.monotonic() - started
    sim.faults({})
    from workers.coordination import set_kill_switch

    set_kill_switch(False)
    return {
        "positions": summary["total"],
        "closed": summary["closed"],
        "failed": summary["failed"],
        "latency_ms": latency_ms,
        "seconds": round(seconds, 2),
        "seconds_per_position": round(seconds / max(summary["total"], 1), 3),
    }


def measure_aged_close(app, sim: SimulatorClient, positions: int) -> dict[str, Any]:
    _fresh_book(sim)
    chosen = [(("binance", "bybit")[i % 2], SYMBOLS[i // 2]) for i in range(positions)]
    for index, (exchange, base) in enumerate(chosen):
        _send_open(app, f"flow-aged-{index}", exchange, base)
    _wait(
        lambda: (
            _rows("SELECT count(*) FROM aged_positions WHERE status = 'active'")[0][0] >= positions
        ),
        120,
        "aged positions detected",
    )
    # Every long's breakeven target is just above entry: a 5 % rise crosses them all at once.
    crossed_at_ms = time.time() * 1000
    for exchange, base in chosen:
        price = sim.current_prices()[exchange][f"{base}/USDT:USDT"]
        sim.prices(
            {
                "exchange": exchange,
                "symbol": f"{base}/USDT:USDT",
                "price": str(Decimal(price) * Decimal("1.05")),
            },
        )
    _wait(
        lambda: (
            _rows("SELECT count(*) FROM aged_positions WHERE status = 'closed'")[0][0] >= positions
        ),
        120,
        "aged closes",
    )
    closes = [o for o in sim.ledger() if o["reduceOnly"]]
    recorded = _rows(
        "SELECT close_duration_ms FROM aged_positions "
        "WHERE status = 'closed' AND close_duration_ms IS NOT NULL"
    )
    return {
        **_ms([o["timestamp"] - crossed_at_ms for o in closes]),
        "recorded_close_after_target": _ms([float(ms) for (ms,) in recorded]),
        "sweep_interval_s": 2.0,
        "positions": positions,
    }


def _fresh_book(sim: SimulatorClient) -> None:
    """A flat exchange and an empty record: positions an earlier phase left in the book
    (the simulator's reset clears only the exchange) would differ from the exchange's, and
    an aged close waits for such a difference to settle."""
    from workers.store.db import truncate_all

    sim.reset()
    truncate_all()


def _sweeping_worker(app) -> str | None:
    """The node running an aged sweep right now, if any."""
    active = app.control.inspect(timeout=1.0).active() or {}
    for node, tasks in active.items():
        if any(task.get("name") == "aged_phase_sweep" for task in tasks):
            return node
    return None


def measure_aged_sweep_kill(app, stack: Stack, sim: SimulatorClient) -> dict[str, Any]:
    """Two workers; the one running an aged sweep (held in its tickers call) is SIGKILLed
    as the price crosses a target: from the crossing (and from the kill) to the close."""
    import redis

    from workers import redis_keys

    _fresh_book(sim)
    stack.start_worker("flows2", concurrency=8)
    _send_open(app, "flow-sweep-kill", "binance", "BTC")
    _wait(
        lambda: _rows("SELECT count(*) FROM aged_positions WHERE status = 'active'")[0][0] >= 1,
        60,
        "the aged position detected",
    )
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "binance",
                    "operation": "tickers",
                    "kind": "latency",
                    "latency_ms": 30_000,
                    "count": 1,
                }
            ]
        },
    )
    # Held until the client's timeout (EXECQ_EXCHANGE_TIMEOUT_MS, 10 s).
    sweeping = _wait(lambda: _sweeping_worker(app), 30, "a sweep held in its tickers call")
    client = redis.Redis.from_url(stack.redis_url)
    try:
        held = bool(client.exists(redis_keys.sweep_lock("aged")))
        price = sim.price("binance", "BTC/USDT:USDT")
        sim.faults({})
        crossed_at_ms = time.time() * 1000
        sim.prices(
            {
                "exchange": "binance",
                "symbol": "BTC/USDT:USDT",
                "price": str(Decimal(price) * Decimal("1.05")),
            },
        )
        stack.kill_worker(sweeping)
        killed_at_ms = time.time() * 1000
        lock_ttl_ms = client.pttl(redis_keys.sweep_lock("aged"))
    finally:
        client.close()
    _wait(
        lambda: _rows("SELECT count(*) FROM aged_positions WHERE status = 'closed'")[0][0] >= 1,
        60,
        "the close after the kill",
        interval_s=0.05,
    )
    [close] = [o for o in sim.ledger() if o["reduceOnly"]]
    # The later phases run on flows1 alone.
    if not stack.worker("flows1").alive:
        stack.restart_worker("flows1")
    if stack.worker("flows2").alive:
        stack.kill_worker("flows2", signal.SIGTERM)
    return {
        "lock_held_while_sweep_hung": held,
        "lock_ttl_after_kill_ms": lock_ttl_ms,
        "close_after_crossing_ms": round(close["timestamp"] - crossed_at_ms, 1),
        "close_after_kill_ms": round(close["timestamp"] - killed_at_ms, 1),
        "sweep_interval_s": 2.0,
    }


def measure_sweep(sim: SimulatorClient, settings_env: dict[str, str], count: int) -> dict[str, Any]:
    """The sweep in this process over ``count`` book positions on 100 simulated accounts."""
    accounts = [
        {"name": f"{kind}{n:02d}", "ccxt_class": cls, "mode": "sim"}
        for kind, cls in (("bn", "binanceusdm"), ("bb", "bybit"))
        for n in range(50)
    ]
    env = {**settings_env, "EXECQ_ACCOUNTS": json.dumps(accounts), "EXECQ_SIM_URL": sim.base_url}
    with process_env(env):
        from workers.flows.aged_sweep import sweep_aged
        from workers.settings import get_settings
        from workers.store.db import session_scope
        from workers.store.models import Position

        opened = datetime.now(UTC) - timedelta(days=1)
        with session_scope() as session:
            for index in range(count):
                account = accounts[index % len(accounts)]["name"]
                base = SYMBOLS[(index // len(accounts)) % len(SYMBOLS)]
                session.add(
                    Position(
                        account=account,
                        symbol=f"{base}/USDT:USDT",
                        side="long",
                        size=Decimal(AMOUNTS[base]),
                        entry_price=Decimal("1000000"),
                        status="open",
                        verification="verified",
                        opened_at=opened,
                        realized_pnl=Decimal(0),
                    )
                )
        settings = get_settings()
        before = sim.stats()
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            report = sweep_aged(settings)
            timings.append((time.perf_counter() - started) * 1000)
        after = sim.stats()
        tickers = sum(
            after.get(x, {}).get("tickers", 0) - before.get(x, {}).get("tickers", 0)
            for x in ("binance", "bybit")
        )
        return {
            "positions": report.positions,
            "first_ms": round(timings[0], 1),
            "steady_ms": round(min(timings[1:]), 1),
            "ticker_calls_per_sweep": tickers / 3,
            "interval_ms": settings.aged_sweep_interval_s * 1000,
        }


def measure_kill_recovery(app, stack: Stack, sim: SimulatorClient, orders: int) -> dict[str, Any]:
    sim.reset()
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "binance",
                    "operation": "create_order",
                    "kind": "timeout_after_accept",
                    "count": orders,
                    "hang_ms": 120_000,
                }
            ]
        },
    )
    for index in range(orders):
        _send_open(app, f"flow-kill-{index}", "binance", SYMBOLS[index % len(SYMBOLS)])
    _wait(
        lambda: len(sim.ledger()) >= orders,
        60,
        "orders accepted and hanging",
    )
    stack.kill_worker("flows1")
    killed = time.monotonic()
    stack.restart_worker("flows1")
    _wait(
        lambda: (
            _rows(
                "SELECT count(*) FROM orders WHERE signal_id LIKE 'flow-kill-%' "
                "AND status = 'filled'"
            )[0][0]
            >= orders
        ),
        400,
        "orders resolved",
        interval_s=0.5,
    )
    seconds = time.monotonic() - killed
    sim.faults({})
    ledger = sim.ledger()
    return {
        "orders_in_doubt": orders,
        "seconds_to_resolved": round(seconds, 1),
        "recovery_interval_s": 60.0,
        "exchange_orders": len(ledger),
    }


# --- with and without the stream holder -------------------------------------------------------


def _fresh_book_streams(sim: SimulatorClient, with_streams: bool) -> None:
    """``_fresh_book``; the simulator's reset closes every stream connection, so with the
    holder running, wait until it has reconnected and reconciled since."""
    reset_at = datetime.now(UTC)
    _fresh_book(sim)
    if with_streams:
        _wait(
            lambda: streams_live(get_redis(), STREAM_EXCHANGES, since=reset_at),
            60,
            "the streams live again",
        )


def _price_subscribed(sim: SimulatorClient, exchange: str, base: str) -> bool:
    """Whether a public stream connection of ``exchange`` watches ``base``'s price."""
    connections = sim.streams()["connections"]
    return any(
        connection["exchange"] == exchange
        and connection["stream"] == "public_stream"
        and any(f"{base.lower()}usdt" in str(name).lower() for name in connection["subscriptions"])
        for connection in connections
    )


# Seconds between two price crossings: they land at every point of the sweep's 2 s
# interval, and a close (tens of milliseconds with streams) is done before the next.
CROSSING_EVERY_S = 0.35


def measure_price_to_close(
    app, sim: SimulatorClient, positions: int, *, with_streams: bool
) -> dict[str, Any]:
    """One aged long per (exchange, symbol); the prices are moved 5 % up, across their
    breakeven targets, one every ``CROSSING_EVERY_S``: the milliseconds from each move to
    the exchange accepting that position's close (its ledger timestamp), and what claimed
    each close (``trigger``: ``stream`` or ``sweep``)."""
    from workers.settings import get_settings

    _fresh_book_streams(sim, with_streams)
    chosen = [(STREAM_EXCHANGES[i % 2], SYMBOLS[(i // 2) % len(SYMBOLS)]) for i in range(positions)]
    prefix = f"flow-cross-{'streams' if with_streams else 'sweep'}-"
    for index, (exchange, base) in enumerate(chosen):
        _send_open(app, f"{prefix}{index}", exchange, base)
    _wait(
        lambda: (
            _rows(
                "SELECT count(*) FROM aged_positions "
                "WHERE status = 'active' AND target_price IS NOT NULL"
            )[0][0]
            >= positions
        ),
        120,
        "aged positions with targets",
    )
    if with_streams:
        for exchange, base in chosen:
            _wait(
                lambda exchange=exchange, base=base: _price_subscribed(sim, exchange, base),
                30,
                f"{exchange} {base} watched",
            )
        # The holder compares prices with the targets it re-reads on this interval.
        time.sleep(2 * get_settings().streams.targets_refresh_s)
    moved_at_ms: dict[tuple[str, str], float] = {}
    started = time.monotonic()
    for index, (exchange, base) in enumerate(chosen):
        delay = started + index * CROSSING_EVERY_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the crossings
        symbol = f"{base}/USDT:USDT"
        price = Decimal(sim.price(exchange, symbol)) * Decimal("1.05")
        moved_at_ms[(exchange, symbol)] = time.time() * 1000
        sim.prices({"exchange": exchange, "symbol": symbol, "price": str(price)})
    _wait(
        lambda: (
            _rows("SELECT count(*) FROM aged_positions WHERE status = 'closed'")[0][0] >= positions
        ),
        60,
        "every aged close booked",
    )
    accepted: dict[tuple[str, str], float] = {}
    for order in sim.ledger():
        key = (order["exchange"], order["symbol"])
        if order["reduceOnly"] and key in moved_at_ms:
            accepted[key] = min(accepted.get(key, order["timestamp"]), order["timestamp"])
    latencies = {key: accepted[key] - moved_at_ms[key] for key in accepted}
    claimed = _rows(
        "SELECT p.account, p.symbol, coalesce(e.payload->>'trigger', 'none') FROM events e "
        "JOIN aged_positions a ON a.id = e.aged_id JOIN positions p ON p.id = a.position_id "
        "WHERE e.type = 'aged_close_claimed' ORDER BY e.id"
    )
    triggers: dict[str, int] = {}
    trigger_of: dict[tuple[str, str], str] = {}
    for account, symbol, trigger in claimed:
        trigger_of.setdefault((account, symbol), trigger)
        triggers[trigger] = triggers.get(trigger, 0) + 1
    slowest = max(latencies, key=latencies.__getitem__, default=None)
    return {
        **_ms(list(latencies.values())),
        "triggers": triggers,
        "slowest": None
        if slowest is None
        else {
            "exchange": slowest[0],
            "symbol": slowest[1],
            "ms": round(latencies[slowest], 1),
            "trigger": trigger_of.get(slowest),
        },
    }


# What an order's own path may ask an exchange after its create: its state, its position.
# (Tickers are the aged sweep's, per interval; markets and account checks a client's set-up.)
ORDER_OPERATIONS = ("fetch_order", "open_orders", "order_history", "positions")


def measure_bybit_requests(app, sim: SimulatorClient, orders: int, *, with_streams: bool):
    """``orders`` Bybit market opens, one after the other, each awaited until verified:
    the requests of ``ORDER_OPERATIONS`` the simulator counted on Bybit beyond the
    creates, per order, and every operation counted meanwhile."""
    _fresh_book_streams(sim, with_streams)
    prefix = f"flow-bybit-{'streams' if with_streams else 'polls'}-"
    before = sim.stats().get("bybit", {})
    for index in range(orders):
        _send_open(app, f"{prefix}{index}", "bybit", SYMBOLS[index % len(SYMBOLS)])
        _wait(
            lambda index=index: _rows(
                "SELECT count(*) FROM orders WHERE signal_id = :s AND verification IS NOT NULL",
                s=f"{prefix}{index}",
            )[0][0],
            60,
            f"bybit order {index} verified",
            interval_s=0.05,
        )
    after = sim.stats().get("bybit", {})
    by_operation = {
        operation: count - before.get(operation, 0)
        for operation, count in after.items()
        if count - before.get(operation, 0) and operation != "create_order"
    }
    creates = after.get("create_order", 0) - before.get("create_order", 0)
    beyond = sum(by_operation.get(operation, 0) for operation in ORDER_OPERATIONS)
    return {
        "orders": orders,
        "creates": creates,
        "beyond_create_per_order": round(beyond / max(creates, 1), 2),
        "by_operation": by_operation,
    }


def measure_streams(app, stack: Stack, sim: SimulatorClient, positions: int, orders: int):
    """Each stream figure without the holder, then with it (started here, stopped after)."""
    without = {
        "price_to_close": measure_price_to_close(app, sim, positions, with_streams=False),
        "bybit_requests": measure_bybit_requests(app, sim, orders, with_streams=False),
    }
    holder = stack.start_streams()
    try:
        with_streams = {
            "price_to_close": measure_price_to_close(app, sim, positions, with_streams=True),
            "bybit_requests": measure_bybit_requests(app, sim, orders, with_streams=True),
        }
    finally:
        holder.stop()
    p99 = with_streams["price_to_close"]["p99_ms"]
    beyond = with_streams["bybit_requests"]["beyond_create_per_order"]
    return {
        "price_to_close_ms": {
            "streams": with_streams["price_to_close"],
            "sweep_only": without["price_to_close"],
            "sweep_interval_s": 2.0,
        },
        "bybit_requests_beyond_create": {
            "streams": with_streams["bybit_requests"],
            "polls": without["bybit_requests"],
        },
        "targets": {
            "price_to_close_p99_ms": {
                "target": PRICE_TO_CLOSE_P99_TARGET_MS,
                "measured": p99,
                "met": p99 is not None and p99 <= PRICE_TO_CLOSE_P99_TARGET_MS,
            },
            "bybit_requests_beyond_create": {
                "target": BYBIT_REQUESTS_BEYOND_CREATE_TARGET,
                "measured": beyond,
                "met": beyond <= BYBIT_REQUESTS_BEYOND_CREATE_TARGET,
            },
        },
    }


def run_flow_bench(
    workdir: Path,
    *,
    orders: int = 100,
    latency_ms: int = 50,
    sweep_positions: int = 1000,
    stream_positions: int = 20,
    stream_orders: int = 20,
    redis_url: str | None = None,
    phases: tuple[str, ...] = (*PHASES, "sweep"),
) -> dict[str, Any]:
    """Every flow figure (or those of ``phases``); on a private ``redis-server`` unless
    ``redis_url`` (an empty database) is given."""
    started = time.monotonic()
    with (
        scratch("flows", workdir=workdir, redis_url=redis_url) as run,
        Stack(env=run.env(AGED_ENV), workdir=workdir / "stack") as stack,
    ):
        sim = SimulatorClient(stack.start_simulator(), timeout_s=60)
        stack.start_worker("flows1", concurrency=32)
        beat = stack.start_beat()
        app = client_app(run.redis_url)
        measures = {
            "verify": lambda: measure_verify(app, sim, orders),
            "liquidation": lambda: measure_liquidation(app, sim, latency_ms),
            "aged_close": lambda: measure_aged_close(app, sim, 10),
            "aged_sweep_kill": lambda: measure_aged_sweep_kill(app, stack, sim),
            "kill_recovery": lambda: measure_kill_recovery(app, stack, sim, 5),
            "streams": lambda: measure_streams(app, stack, sim, stream_positions, stream_orders),
        }
        result: dict[str, Any] = {}
        for phase in PHASES:
            if phase in phases:
                result[phase] = measures[phase]()
        if "sweep" in phases:
            # The sweep is timed in this process, on a book the workers and beat must not touch.
            beat.stop()
            stack.kill_worker("flows1", signal.SIGTERM)
            sim.reset()
            result["sweep"] = measure_sweep(sim, run.env(), sweep_positions)
        result["seconds"] = round(time.monotonic() - started, 1)
        return result
