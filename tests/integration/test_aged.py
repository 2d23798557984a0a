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

AGED_ENV = {
    "EXECQ_AGED__MAX_AGE_S": "2",
    "EXECQ_AGED__GRACE_PERIOD_S": "3",
    "EXECQ_AGED__LOSS_STEP_PERCENT": "1",
    "EXECQ_AGED__LOSS_STEP_INTERVAL_S": "1",
    "EXECQ_AGED__MAX_LOSS_PERCENT": "5",
    "EXECQ_AGED__COMMISSION_PERCENT": "0.05",
    "EXECQ_AGED_SWEEP_INTERVAL_S": "0.5",
    "EXECQ_RECOVERY_SWEEP_INTERVAL_S": "3600",
}


@pytest.fixture
def aged_stack(workers, db, redis_clean, sim):
    """A worker and a beat with the compressed aged settings, booting side by side."""
    worker = workers.spawn(concurrency=8, env=AGED_ENV)
    beat = ManagedProcess(
        "beat",
        [sys.executable, "-m", "celery", "-A", "workers", "beat", "-l", "INFO"],
        env=AGED_ENV,
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
    yield workers
    # The worker's warm shutdown (``workers``) runs beside the beat's.
    beat.terminate()
    for running in workers.workers.values():
        running.terminate()
    beat.wait_stopped()


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
    # Given a long on Binance and a short on Bybit at 3500, and prices well against both
    sim.prices({"symbol": ETH, "price": "3500"})
    open_position("binance", ETH, "buy", "0.1")
    open_position("bybit", ETH, "sell", "0.1")
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3200"})
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3800"})

    # When they age past grace into progressive, where the accepted loss grows each second
    for exchange in ("binance", "bybit"):
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

    # Then both close with a progressive reason and the whole path on record
    for exchange in ("binance", "bybit"):
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
    wait_aged("binance", ETH, lambda row: row.phase == "grace", 30)

    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3600"})

    row = wait_aged("binance", ETH, lambda r: r.status == "closed", 30)
    assert row.close_reason == "profitable"
    assert row.close_pnl > 0


def test_position_closed_outside_execq_is_recorded_as_closed_externally(aged_stack, sim):
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3500"})
    open_position("bybit", ETH, "buy", "0.1")
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3000"})
    wait_aged("bybit", ETH, lambda row: row.status == "active", 30)

    # Someone closes it by hand, then the price reaches the target
    sim.set_position("bybit", ETH, "0")
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3600"})

    row = wait_aged("bybit", ETH, lambda r: r.status == "closed_externally", 30)
    assert "closed_externally" in event_types(row.id)
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


def test_three_failed_closes_alert_once_then_chunks_close_exactly(aged_stack, sim):
    # Given a BTC position (step 0.001, minimum 0.005) whose next three closes are refused
    sim.prices({"exchange": "bybit", "symbol": BTC, "price": "65000"})
    open_position("bybit", BTC, "buy", "0.017")
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "bybit",
                    "operation": "create_order",
                    "symbol": BTC,
                    "kind": "insufficient_margin",
                    "count": 3,
                }
            ]
        }
    )
    sim.prices({"exchange": "bybit", "symbol": BTC, "price": "66000"})

    # Then after three failures one critical alert, and the chunk fallback closes it exactly
    row = wait_aged(
        "bybit",
        BTC,
        lambda r: r.status == "closed",
        60,
        message="chunk fallback did not close the position",
    )
    failing = alerts("aged_close_failing")
    assert len(failing) == 1 and failing[0].severity == "critical"
    assert row.consecutive_failures == 0 and row.attempts == 4
    chunks = [Decimal(o["amount"]) for o in sim.ledger() if o["reduceOnly"]]
    assert len(chunks) == 3
    assert all(chunk >= Decimal("0.005") and chunk % Decimal("0.001") == 0 for chunk in chunks)
    assert sum(chunks) == Decimal("0.017")
    assert event_types(row.id).count("aged_close_failed") == 3
    assert sim_size(sim, "bybit", BTC) == 0


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
