"""Aged positions end to end, time compressed to seconds: a real beat sends the sweeps,
real workers close through the exactly-once path, the simulator's price decides."""

from __future__ import annotations

import sys
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.conftest import ManagedProcess, wait_for

ETH = "ETH/USDT:USDT"
BTC = "BTC/USDT:USDT"
DOGE = "DOGE/USDT:USDT"

AGED_ENV = {
    "EXECQ_AGED__MAX_AGE_S": "2",
    "EXECQ_AGED__GRACE_PERIOD_S": "3",
    "EXECQ_AGED__LOSS_STEP_PERCENT": "1",
    "EXECQ_AGED__LOSS_STEP_INTERVAL_S": "1",
    "EXECQ_AGED__MAX_LOSS_PERCENT": "5",
    "EXECQ_AGED__COMMISSION_PERCENT": "0.05",
    # The backoff between failed closes, compressed like every other duration here.
    "EXECQ_AGED__CLOSE_BACKOFF_BASE_S": "0.25",
    "EXECQ_AGED__CLOSE_BACKOFF_CAP_S": "1",
    "EXECQ_AGED_SWEEP_INTERVAL_S": "0.5",
    "EXECQ_RECOVERY_SWEEP_INTERVAL_S": "3600",
}


def start_stack(workers, worker_env: dict[str, str], beat_env: dict[str, str]):
    """A worker and a beat, booting side by side; both, once beat sends sweeps."""
    worker = workers.spawn(concurrency=8, env=worker_env)
    beat = ManagedProcess(
        "beat",
        [sys.executable, "-m", "celery", "-A", "workers", "beat", "-l", "INFO"],
        env=beat_env,
    ).start()
    workers.wait_ready(worker)
    from workers import redis_keys
    from workers.redis_client import get_redis

    # Positions opened before beat sweeps would skip grace: start once sweeps are running.
    wait_for(
        lambda: get_redis().get(redis_keys.sweep_last_run("aged")),
        60,
        interval_s=0.1,
        message=f"beat never ran a sweep:\n{beat.log_tail()}",
    )
    return worker, beat


def stop_stack(workers, beat) -> None:
    # The workers' warm shutdown (``workers``) runs beside the beat's.
    beat.terminate()
    for running in workers.workers.values():
        running.terminate()
    beat.wait_stopped()


@pytest.fixture
def aged_stack(workers, db, redis_clean, sim):
    """A worker and a beat with the compressed aged settings."""
    _, beat = start_stack(workers, AGED_ENV, AGED_ENV)
    yield workers
    stop_stack(workers, beat)


def open_position(exchange: str, symbol: str, side: str, amount: str) -> dict:
    from workers.producer import submit_market_order

    summary = submit_market_order(
        f"aged-test-{uuid.uuid4().hex[:12]}", exchange, symbol, side, amount
    ).get(timeout=60)
    assert summary["status"] == "filled"
    return summary


def aged_row(exchange: str, symbol: str):
    from workers.store.db import session_scope
    from workers.store.models import AgedPosition, Position

    with session_scope() as session:
        return session.scalars(
            select(AgedPosition)
            .join(Position, Position.id == AgedPosition.position_id)
            .where(Position.account == exchange, Position.symbol == symbol)
            .order_by(AgedPosition.id.desc())
        ).first()


def wait_aged(exchange: str, symbol: str, predicate, timeout_s: float = 60, message: str = ""):
    def check():
        row = aged_row(exchange, symbol)
        return row if row is not None and predicate(row) else None

    return wait_for(check, timeout_s, interval_s=0.1, message=message or "aged state not reached")


def event_types(aged_id: int) -> list[str]:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        return [
            e.type
            for e in session.scalars(
                select(Event).where(Event.aged_id == aged_id).order_by(Event.id)
            )
        ]


def close_orders(aged_id: int) -> list:
    from workers.store.db import session_scope
    from workers.store.models import Order

    with session_scope() as session:
        return list(session.scalars(select(Order).where(Order.aged_id == aged_id)))


def alerts(kind: str) -> list:
    from workers.store.db import session_scope
    from workers.store.models import Alert

    with session_scope() as session:
        return list(session.scalars(select(Alert).where(Alert.kind == kind)))


def sim_size(sim, exchange: str, symbol: str) -> Decimal:
    return sum(
        (
            Decimal(p["size"])
            for p in sim.positions()
            if p["exchange"] == exchange and p["symbol"] == symbol
        ),
        Decimal(0),
    )


def test_long_and_short_age_through_grace_into_progressive_and_close_on_the_price(aged_stack, sim):
    # Given a long on Binance and shorts on Bybit and OKX (one contract of 0.1 ETH) at
    # 3500, and prices well against all three
    sim.prices({"symbol": ETH, "price": "3500"})
    open_position("binance", ETH, "buy", "0.1")
    open_position("bybit", ETH, "sell", "0.1")
    open_position("okx", ETH, "sell", "0.1")
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3200"})
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3800"})
    sim.prices({"exchange": "okx", "symbol": ETH, "price": "3800"})

    # When they age past grace into progressive, where the accepted loss grows each second
    for exchange in ("binance", "bybit", "okx"):
        wait_aged(
            exchange,
            ETH,
            lambda row: row.phase == "progressive",
            30,
            message=f"{exchange} never reached progressive",
        )
    # and the price comes back inside the widened tolerance
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3460"})
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3540"})
    sim.prices({"exchange": "okx", "symbol": ETH, "price": "3540"})

    # Then all close with a progressive reason and the whole path on record
    for exchange in ("binance", "bybit", "okx"):
        row = wait_aged(
            exchange,
            ETH,
            lambda r: r.status == "closed",
            30,
            message=f"{exchange} aged position did not close",
        )
        assert row.close_reason.startswith("progressive_")
        assert row.close_reason.endswith("pct")
        assert row.close_pnl < 0
        types = event_types(row.id)
        assert types.index("aged_detected") < types.index("aged_phase_changed")
        assert types.index("aged_phase_changed") < types.index("aged_closed")
        assert sim_size(sim, exchange, ETH) == 0


def test_a_profitable_price_closes_in_grace_as_profitable(aged_stack, sim):
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    open_position("binance", ETH, "buy", "0.1")
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3400"})
    grace = wait_aged("binance", ETH, lambda row: row.phase == "grace", 30)
    # The breakeven target of a long, 3500 x 1.0005 / 0.9995 = 3503.5017..., rounded up to
    # the market's tick (0.01 for ETH on Binance): selling there never loses
    assert grace.target_price == Decimal("3503.51")

    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3600"})

    row = wait_aged("binance", ETH, lambda r: r.status == "closed", 30)
    assert row.close_reason == "profitable"
    assert row.close_pnl > 0
    # and the close order was verified like every filled order
    assert [order.verification for order in close_orders(row.id)] == ["verified"]


def test_position_closed_outside_execq_is_recorded_as_closed_externally(aged_stack, sim):
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3500"})
    open_position("bybit", ETH, "buy", "0.1")
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3000"})
    wait_aged("bybit", ETH, lambda row: row.status == "active", 30)

    # Someone closes it by hand, then the price reaches the target
    sim.set_position("bybit", ETH, "0")
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3600"})

    row = wait_aged("bybit", ETH, lambda r: r.status == "closed_externally", 30)
    assert "aged_closed_externally" in event_types(row.id)
    assert [o for o in sim.ledger() if o["reduceOnly"]] == []


def test_size_changed_outside_execq_is_closed_at_the_real_size(aged_stack, sim):
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    open_position("binance", ETH, "buy", "0.1")
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3000"})
    wait_aged("binance", ETH, lambda row: row.status == "active", 30)

    sim.set_position("binance", ETH, "0.3", "3500")
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3600"})

    row = wait_aged("binance", ETH, lambda r: r.status == "closed", 30)
    closes = [o for o in sim.ledger() if o["reduceOnly"]]
    assert [Decimal(o["amount"]) for o in closes] == [Decimal("0.3")]
    assert "position_size_changed" in event_types(row.id)
    assert sim_size(sim, "binance", ETH) == 0


@pytest.mark.parametrize(
    ("exchange", "symbol", "price", "size", "step", "minimum"),
    [
        # Bybit BTC: step 0.001, minimum 0.005
        pytest.param("bybit", BTC, "65000", "0.017", "0.001", "0.005", id="bybit-btc"),
        # OKX DOGE: contracts of 1,000 DOGE in lots of 0.01, so steps of 10 DOGE
        pytest.param("okx", DOGE, "0.15", "470", "10", "10", id="okx-doge-contracts"),
    ],
)
def test_three_failed_closes_alert_once_then_chunks_close_exactly(
    aged_stack, sim, exchange, symbol, price, size, step, minimum
):
    # Given a position whose next three closes are refused
    sim.prices({"exchange": exchange, "symbol": symbol, "price": price})
    open_position(exchange, symbol, "buy", size)
    sim.faults(
        {
            "rules": [
                {
                    "exchange": exchange,
                    "operation": "create_order",
                    "symbol": symbol,
                    "kind": "insufficient_margin",
                    "count": 3,
                }
            ]
        }
    )
    sim.prices({"exchange": exchange, "symbol": symbol, "price": str(Decimal(price) * 2)})

    # Then after three failures one critical alert, and the chunk fallback closes it exactly
    row = wait_aged(
        exchange,
        symbol,
        lambda r: r.status == "closed",
        60,
        message="chunk fallback did not close the position",
    )
    failing = alerts("aged_close_failing")
    assert len(failing) == 1 and failing[0].severity == "critical"
    assert row.consecutive_failures == 0 and row.attempts == 4
    # Each chunk on the market's grid (base units in the ledger, whole lots on OKX)
    chunks = [Decimal(o["amount"]) for o in sim.ledger() if o["reduceOnly"]]
    assert len(chunks) == 3
    assert all(chunk >= Decimal(minimum) and chunk % Decimal(step) == 0 for chunk in chunks)
    assert sum(chunks) == Decimal(size)
    assert event_types(row.id).count("aged_close_failed") == 3
    assert sim_size(sim, exchange, symbol) == 0
    assert {o.verification for o in close_orders(row.id) if o.filled > 0} == {"verified"}


def test_worker_restart_mid_aging_loses_nothing(aged_stack, sim):
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    open_position("binance", ETH, "sell", "0.1")
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3700"})
    wait_aged("binance", ETH, lambda row: row.status == "active", 30)

    # When every worker dies and a new one starts
    for worker in list(aged_stack.workers.values()):
        worker.kill()
    aged_stack.start(concurrency=8, env=AGED_ENV)
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3400"})

    # Then the aged position is still tracked from Postgres and closes
    row = wait_aged("binance", ETH, lambda r: r.status == "closed", 30)
    assert row.close_reason == "profitable"
    assert sim_size(sim, "binance", ETH) == 0


def test_dust_below_the_minimum_order_size_is_marked_unclosable_and_alerted_once(aged_stack, sim):
    # Given an aged BTC position the exchange shows at 0.003, under BTC's minimum of 0.005
    sim.prices({"exchange": "bybit", "symbol": BTC, "price": "65000"})
    open_position("bybit", BTC, "buy", "0.005")
    sim.prices({"exchange": "bybit", "symbol": BTC, "price": "60000"})
    wait_aged("bybit", BTC, lambda row: row.status == "active", 30)
    sim.set_position("bybit", BTC, "0.003", "65000")

    # When its target is reached
    sim.prices({"exchange": "bybit", "symbol": BTC, "price": "70000"})

    # Then no order is tried; the episode ends unclosable with one critical alert
    row = wait_aged("bybit", BTC, lambda r: r.status == "unclosable", 30)
    assert "minimum order size" in row.last_error
    assert [o for o in sim.ledger() if o["reduceOnly"]] == []
    unclosable = alerts("aged_position_unclosable")
    assert len(unclosable) == 1 and unclosable[0].severity == "critical"


def events_of(aged_id: int, event_type: str) -> list:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        return list(
            session.scalars(
                select(Event)
                .where(Event.aged_id == aged_id, Event.type == event_type)
                .order_by(Event.id)
            )
        )


def refuse_creates(exchange: str, symbol: str, count: int | None = None) -> dict:
    """A fault rule: the exchange refuses creates on the symbol (insufficient margin)."""
    rule = {"exchange": exchange, "operation": "create_order", "symbol": symbol}
    rule |= {"kind": "insufficient_margin"} | ({"count": count} if count else {})
    return rule


# --- the policy after failed closes ---------------------------------------------------------


def test_a_small_position_whose_closes_failed_three_times_closes_once_refusals_stop(
    aged_stack, sim
):
    # Given a BTC long of 0.005 on Binance, the minimum order (it cannot be split), whose
    # next three closes the exchange refuses
    sim.prices({"exchange": "binance", "symbol": BTC, "price": "65000"})
    open_position("binance", BTC, "buy", "0.005")
    sim.faults({"rules": [refuse_creates("binance", BTC, count=3)]})

    # When its price moves past the target
    sim.prices({"exchange": "binance", "symbol": BTC, "price": "66000"})

    # Then once the refusals stop it is closed whole, on the fourth attempt
    row = wait_aged(
        "binance",
        BTC,
        lambda r: r.status == "closed",
        60,
        message="the small position was never closed again after three failures",
    )
    assert (row.attempts, row.consecutive_failures) == (4, 0)
    assert [Decimal(o["amount"]) for o in sim.ledger() if o["reduceOnly"]] == [Decimal("0.005")]
    assert sim_size(sim, "binance", BTC) == 0
    # and no widening was recorded that changed nothing
    for widened in events_of(row.id, "aged_tolerance_widened"):
        assert widened.payload["from"] != widened.payload["to"]


def test_a_splittable_position_whose_closes_keep_failing_backs_off_alerts_again_and_widens(
    aged_stack, sim
):
    from workers.execution.aged_close import CloseRules, backoff_s
    from workers.settings import AgedSettings

    # Given an ETH long of 0.5 on Bybit whose every close the exchange refuses
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3500"})
    open_position("bybit", ETH, "buy", "0.5")
    sim.faults({"rules": [refuse_creates("bybit", ETH)]})

    # When its price moves past the target
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3600"})

    # Then, once whole closes and then chunks have kept failing, the accepted loss widens
    row = wait_aged("bybit", ETH, lambda r: r.status in ("active", "closing"), 30)
    wait_for(
        lambda: events_of(row.id, "aged_tolerance_widened"),
        90,
        message="the accepted loss never widened while closes kept failing",
    )
    widened = events_of(row.id, "aged_tolerance_widened")
    assert all(event.payload["from"] != event.payload["to"] for event in widened)
    # with a critical alert at three failures and another when it escalated to widening
    failing = alerts("aged_close_failing")
    assert [a.payload["consecutive_failures"] for a in failing][:2] == [3, 6]
    assert {a.severity for a in failing} == {"critical"}
    # and the refused attempts were spaced by a growing backoff, not sent on every sweep
    rules = CloseRules.from_settings(AgedSettings(close_backoff_base_s=0.25, close_backoff_cap_s=1))
    failed = events_of(row.id, "aged_close_failed")
    for count, (before, after) in enumerate(zip(failed, failed[1:], strict=False), start=1):
        gap_s = (after.occurred_at - before.occurred_at).total_seconds()
        assert gap_s >= backoff_s(count, rules) - 0.05
    assert sim.calls("bybit", "create_order") <= len(failed) + 2


def test_a_close_filled_in_two_orders_records_the_price_and_pnl_of_both(aged_stack, sim):
    # Given an ETH long of 0.1 on Binance at 3500 whose first close fills only half
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    open_position("binance", ETH, "buy", "0.1")
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "binance",
                    "operation": "create_order",
                    "symbol": ETH,
                    "kind": "partial_fill",
                    "fraction": "0.5",
                    "count": 1,
                }
            ]
        }
    )

    # When the price reaches 3600 and the close takes two orders
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3600"})
    row = wait_aged("binance", ETH, lambda r: r.status == "closed", 60)

    # Then the close record covers both fills: all of the PnL, at their average price
    closes = [o for o in sim.ledger() if o["reduceOnly"]]
    assert [Decimal(o["filled"]) for o in closes] == [Decimal("0.05"), Decimal("0.05")]
    assert row.close_price == Decimal("3600")
    assert row.close_pnl == Decimal("10")  # (3600 - 3500) x 0.1
    assert row.close_reason == "profitable"
    assert sim_size(sim, "binance", ETH) == 0
    # and the episode went straight to closed, never ending in between
    assert "aged_superseded" not in event_types(row.id)


def test_an_aged_close_finished_by_the_recovery_sweep_after_a_crash_is_recorded_closed(
    workers, db, redis_clean, sim
):
    from tests.conftest import KILLED_WORKER_ENV
    from workers.store.reports import aged_statistics

    # Given a worker whose exchange calls wait 5 s, and beat with a recovery sweep every 2 s
    slow = {**AGED_ENV, **KILLED_WORKER_ENV, "EXECQ_EXCHANGE_TIMEOUT_MS": "5000"}
    beat_env = {**AGED_ENV, "EXECQ_RECOVERY_SWEEP_INTERVAL_S": "2"}
    doomed, beat = start_stack(workers, slow, beat_env)
    try:
        # and an ETH long on Binance whose close the exchange fills without answering
        sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
        open_position("binance", ETH, "buy", "0.1")
        sim.faults(
            {
                "rules": [
                    {
                        "exchange": "binance",
                        "operation": "create_order",
                        "symbol": ETH,
                        "kind": "timeout_after_accept",
                        "hang_ms": 60000,
                        "count": 1,
                    }
                ]
            }
        )
        sim.prices({"exchange": "binance", "symbol": ETH, "price": "3600"})
        wait_for(
            lambda: [o for o in sim.ledger() if o["reduceOnly"]],
            30,
            message="the aged close never reached the exchange",
        )

        # When the worker is SIGKILLed with that close in flight, and another takes over
        doomed.kill()
        workers.start(concurrency=8, env=AGED_ENV)

        # Then the recovery sweep finishes the close, and the episode is closed with its record
        row = wait_aged(
            "binance",
            ETH,
            lambda r: r.status not in ("active", "closing"),
            90,
            message="the episode never ended after the crash",
        )
        assert row.status == "closed"
        assert (row.close_price, row.close_pnl) == (Decimal("3600"), Decimal("10"))
        assert row.close_reason == "profitable" and row.attempts == 1
        assert len([o for o in sim.ledger() if o["reduceOnly"]]) == 1
        assert sim_size(sim, "binance", ETH) == 0
        stats = aged_statistics(1)
        assert stats["closed"] == 1 and stats["closes_by_reason"] == {"profitable": 1}
        assert stats["average_close_after_target_ms"] is not None
    finally:
        stop_stack(workers, beat)


def test_a_worker_killed_mid_sweep_holds_the_aged_sweeps_up_only_briefly(
    workers, db, redis_clean, sim
):
    from workers import redis_keys
    from workers.redis_client import get_redis

    # Given a worker whose exchange calls may take a minute, and beat sweeping every 0.5 s
    patient = {**AGED_ENV, "EXECQ_EXCHANGE_TIMEOUT_MS": "60000"}
    sweeper, beat = start_stack(workers, patient, AGED_ENV)
    lock = redis_keys.sweep_lock("aged")
    try:
        # and an aged ETH long on Binance whose price is short of its target
        sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
        open_position("binance", ETH, "buy", "0.1")
        sim.prices({"exchange": "binance", "symbol": ETH, "price": "3400"})
        wait_aged("binance", ETH, lambda row: row.status == "active", 30)

        # When a sweep hangs in its tickers call on that worker
        before = sim.calls("binance", "tickers")
        sim.faults(
            {
                "rules": [
                    {
                        "exchange": "binance",
                        "operation": "tickers",
                        "kind": "latency",
                        "latency_ms": 60000,
                        "count": 1,
                    }
                ]
            }
        )
        wait_for(lambda: sim.calls("binance", "tickers") > before, 30)
        # (a second worker starts meanwhile; the hanging sweep keeps its short lock alive)
        workers.start(concurrency=8, env=AGED_ENV)
        assert get_redis().exists(lock), "the running sweep's lock was not kept alive"
        # and the price crosses the target while the worker holding the sweep is SIGKILLed
        sim.prices({"exchange": "binance", "symbol": ETH, "price": "3600"})
        last_sweep = get_redis().get(redis_keys.sweep_last_run("aged"))
        sweeper.kill()

        # Then the lock it left behind lives two sweep intervals at most
        assert get_redis().pttl(lock) <= 2 * 0.5 * 1000
        # and the next sweep runs on the other worker, and closes the position
        wait_for(
            lambda: get_redis().get(redis_keys.sweep_last_run("aged")) != last_sweep,
            30,
            message="no aged sweep ran after the worker holding one was killed",
        )
        row = wait_aged("binance", ETH, lambda r: r.status == "closed", 30)
        assert row.close_reason == "profitable"
        assert sim_size(sim, "binance", ETH) == 0
    finally:
        stop_stack(workers, beat)
