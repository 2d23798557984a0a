"""verify_position: a filled order is never reported as a failure, and a close is never assumed."""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import select

from tests.conftest import wait_for

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
SOL = "SOL/USDT:USDT"


def signal() -> str:
    return f"verify-{uuid.uuid4().hex[:16]}"


def open_order(exchange: str, symbol: str, side: str, amount: str, **kwargs) -> dict:
    from workers.producer import submit_market_order

    return submit_market_order(signal(), exchange, symbol, side, amount, **kwargs).get(timeout=90)


def verdict_of(client_order_id: str):
    """The verification event once verify_position has decided (it is chained after the order)."""
    from workers.store.db import session_scope
    from workers.store.models import Event

    def decided():
        with session_scope() as session:
            return session.scalars(
                select(Event).where(
                    Event.client_order_id == client_order_id,
                    Event.type.in_(
                        ["verification_verified", "verification_failed", "verification_unknown"]
                    ),
                )
            ).first()

    return wait_for(decided, 60, interval_s=0.1, message="no verdict recorded")


def sources_asked(client_order_id: str) -> list[str]:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        return [
            e.payload["source"]
            for e in session.scalars(
                select(Event)
                .where(
                    Event.client_order_id == client_order_id, Event.type == "verification_source"
                )
                .order_by(Event.id)
            )
        ]


def book_position(account: str, symbol: str):
    from workers.store.db import session_scope
    from workers.store.models import Position

    with session_scope() as session:
        return session.scalars(
            select(Position).where(
                Position.account == account, Position.symbol == symbol, Position.status == "open"
            )
        ).one_or_none()


def booked(account: str, symbol: str):
    """The open book position once verification has booked it."""
    return wait_for(
        lambda: book_position(account, symbol),
        30,
        interval_s=0.1,
        message=f"no open position booked for {account} {symbol}",
    )


def test_binance_fill_is_verified_from_the_create_response_alone(worker, sim):
    summary = open_order("binance", BTC, "buy", "0.01")
    event = verdict_of(summary["client_order_id"])

    assert event.type == "verification_verified"
    assert event.payload["decided_by"] == "order"
    assert event.payload["mismatch"] is False
    # No exchange call beyond the create: no order fetch, no positions read
    assert sim.calls("binance", "fetch_order") == 0
    assert sim.calls("binance", "positions") == 0
    assert booked("binance", BTC).size == Decimal("0.01")


def test_bybit_bare_create_with_visibility_lag_is_verified_not_failed(worker, sim):
    # Given Bybit's create answers with ids only, and the order is invisible for 1.5 s
    sim.faults({"rules": [{"exchange": "bybit", "kind": "visibility_lag", "lag_ms": 1500}]})

    summary = open_order("bybit", ETH, "buy", "0.1")
    event = verdict_of(summary["client_order_id"])

    assert summary["status"] == "filled"
    assert event.type == "verification_verified"
    assert booked("bybit", ETH).size == Decimal("0.1")


def test_lagging_positions_do_not_matter_when_the_order_says_filled(worker, sim):
    # Given positions lag 3 s behind (cache empty, REST stale) and Bybit hides orders 1 s
    sim.faults(
        {
            "rules": [
                {"exchange": "bybit", "kind": "positions_lag", "lag_ms": 3000},
                {"exchange": "bybit", "kind": "visibility_lag", "lag_ms": 1000},
            ]
        }
    )

    summary = open_order("bybit", SOL, "sell", "1")
    event = verdict_of(summary["client_order_id"])

    assert event.type == "verification_verified"
    assert event.payload["decided_by"] == "order"
    assert booked("bybit", SOL).side == "short"


def test_canceled_with_nothing_filled_is_a_definite_failure(worker, sim):
    from workers.producer import submit_limit_order

    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    summary = submit_limit_order(
        signal(), "binance", ETH, "buy", "0.1", "3000", time_in_force="IOC"
    ).get(timeout=60)
    event = verdict_of(summary["client_order_id"])

    assert event.type == "verification_failed"
    assert book_position("binance", ETH) is None


def test_partial_fill_is_verified_at_the_partial_size_with_a_mismatch(worker, sim):
    sim.faults(
        {"rules": [{"exchange": "binance", "kind": "partial_fill", "fraction": "0.5", "count": 1}]}
    )

    summary = open_order("binance", ETH, "buy", "0.2")
    event = verdict_of(summary["client_order_id"])

    assert Decimal(summary["filled"]) == Decimal("0.1")
    assert event.type == "verification_verified"
    assert Decimal(event.payload["actual_size"]) == Decimal("0.1")
    assert event.payload["mismatch"] is True
    assert booked("binance", ETH).size == Decimal("0.1")


def test_close_that_leaves_a_residual_raises_a_critical_alert(worker, sim):
    from workers.store.db import session_scope
    from workers.store.models import Alert

    opened = open_order("bybit", ETH, "buy", "0.1")
    verdict_of(opened["client_order_id"])
    # Someone adds to the position outside execq; execq's close covers only its own size
    sim.set_position("bybit", ETH, "0.3", "3500")

    closed = open_order("bybit", ETH, "sell", "0.1", reduce_only=True, purpose="close")
    assert closed["status"] == "filled"

    def alert():
        with session_scope() as session:
            return session.scalars(
                select(Alert).where(Alert.kind == "possible_orphaned_position")
            ).first()

    found = wait_for(alert, 60, interval_s=0.2, message="no orphan alert")
    assert found.severity == "critical"
    assert "ETH/USDT:USDT" in found.message
    assert Decimal(found.payload["residual"]) == Decimal("0.2")


def test_fifteen_positions_opened_concurrently_are_fifteen_verified(worker, sim):
    from workers.producer import submit_market_order

    legs = [
        (exchange, symbol)
        for exchange in ("binance", "bybit", "okx")
        for symbol in (BTC, ETH, SOL, "XRP/USDT:USDT", "DOGE/USDT:USDT")
    ]
    amounts = {BTC: "0.01", ETH: "0.1", SOL: "1", "XRP/USDT:USDT": "10", "DOGE/USDT:USDT": "100"}
    results = [
        submit_market_order(signal(), exchange, symbol, "buy", amounts[symbol])
        for exchange, symbol in legs
    ]
    summaries = [result.get(timeout=90) for result in results]

    verdicts = [verdict_of(s["client_order_id"]).type for s in summaries]
    assert verdicts == ["verification_verified"] * 15
    for exchange, symbol in legs:
        assert booked(exchange, symbol).size == Decimal(amounts[symbol])
