"""execute_market_order / execute_limit_order through a real worker, real Redis and
Postgres, and real ccxt clients against the simulator.

The simulator's ledger is the exchange's own record: "exactly once" is asserted
there, not in our database.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.conftest import KILLED_WORKER_ENV, wait_for

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


def new_signal() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


def run_order(**kwargs) -> dict:
    from workers.producer import submit_market_order

    signal_id = kwargs.pop("signal_id", None) or new_signal()
    result = submit_market_order(signal_id, **kwargs)
    return result.get(timeout=90)


def events_for(client_order_id: str) -> list:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        return list(
            session.scalars(
                select(Event).where(Event.client_order_id == client_order_id).order_by(Event.id)
            )
        )


def attempt_classes(client_order_id: str) -> list[str | None]:
    return [e.error_class for e in events_for(client_order_id) if e.type == "order_attempt"]


def alerts_for(client_order_id: str) -> list:
    from workers.store.db import session_scope
    from workers.store.models import Alert, Order

    with session_scope() as session:
        return list(
            session.scalars(
                select(Alert)
                .join(Order, Order.id == Alert.order_id)
                .where(Order.client_order_id == client_order_id)
                .order_by(Alert.id)
            )
        )


def order_row(client_order_id: str):
    from workers.store.orders import load_order

    return load_order(client_order_id)


@pytest.mark.parametrize(("exchange", "symbol"), [("binance", BTC), ("bybit", ETH), ("okx", ETH)])
def test_first_try_success_fills_once_and_records_each_step(worker, sim, exchange, symbol):
    # When a producer sends one market order
    summary = run_order(exchange=exchange, symbol=symbol, side="buy", amount="0.01")

    # Then it filled at the first attempt, exactly one order reached the exchange
    assert summary["status"] == "filled"
    assert Decimal(summary["filled"]) == Decimal("0.01")
    assert summary["attempts"] == 1
    assert len(sim.orders_for(summary["client_order_id"])) == 1
    # and the record tells the story in order
    types = [e.type for e in events_for(summary["client_order_id"])]
    assert types[:3] == ["order_intent", "order_submitting", "order_attempt"]
    assert "order_filled" in types


def test_bybit_bare_create_and_its_fill_are_recorded_as_one_step(worker, sim):
    # Given Bybit, whose create answers with ids only (no status, no fill)
    summary = run_order(exchange="bybit", symbol=ETH, side="buy", amount="0.01")

    # Then one follow-up fetch told the fill, and the acceptance and the fill were
    # written as one move, submitting -> filled, with the ack time of the create
    assert summary["status"] == "filled"
    assert sim.calls("bybit", "fetch_order") == 1
    moves = [e for e in events_for(summary["client_order_id"]) if e.type.startswith("order_")]
    assert [e.type for e in moves] == [
        "order_intent",
        "order_submitting",
        "order_attempt",
        "order_filled",
    ]
    assert moves[-1].payload["from"] == "submitting"
    assert moves[-1].payload["source"] == "create+follow"
    assert order_row(summary["client_order_id"]).acked_at is not None


def test_a_stale_reference_price_is_used_and_refreshed_after_the_create(worker, sim):
    from workers import redis_keys
    from workers.exchange.prices import PRICE_CACHE_TTL_S, PRICE_FRESH_S
    from workers.redis_client import get_redis

    key = redis_keys.price_cache("binance", BTC)
    sim.prices({"exchange": "binance", "symbol": BTC, "price": "61000"})
    # Given a cached price past its fresh window, and an exchange whose tickers fail
    get_redis().set(key, "60000", px=(PRICE_CACHE_TTL_S - PRICE_FRESH_S - 10) * 1000)
    sim.faults({"rules": [{"exchange": "binance", "operation": "tickers", "kind": "server_error"}]})

    # When an order is sent
    summary = run_order(exchange="binance", symbol=BTC, side="buy", amount="0.01")

    # Then it was validated against the cached price, not held up by the ticker, and
    # filled; the failed refresh left the cached price as it was
    assert summary["status"] == "filled"
    assert get_redis().get(key) == "60000"

    # When the exchange answers tickers again, the next order refreshes the price after its create
    sim.faults({"rules": []})
    assert run_order(exchange="binance", symbol=BTC, side="buy", amount="0.01")["status"] == (
        "filled"
    )
    assert Decimal(get_redis().get(key)) == Decimal("61000")
    assert get_redis().pttl(key) > (PRICE_CACHE_TTL_S - PRICE_FRESH_S) * 1000


@pytest.mark.parametrize("exchange", ["binance", "okx"])
def test_an_open_whose_create_failed_ambiguously_is_unknown_and_never_resent(worker, sim, exchange):
    # Given the exchange answers the next create with a 503 (it may have acted)
    sim.faults(
        {
            "rules": [
                {
                    "exchange": exchange,
                    "operation": "create_order",
                    "kind": "server_error",
                    "count": 1,
                }
            ]
        }
    )

    # When an order is sent
    summary = run_order(exchange=exchange, symbol=BTC, side="buy", amount="0.01")

    # Then it was looked up over the visibility window, never seen, and not resent:
    # Binance and OKX accept a finished order's client id again and could fill it twice
    assert summary["status"] == "unknown"
    assert sim.calls(exchange, "create_order") == 1
    assert attempt_classes(summary["client_order_id"]) == ["ambiguous"]
    # and a person is told, once
    assert [a.kind for a in alerts_for(summary["client_order_id"])] == ["order_unknown"]


def test_a_bybit_open_whose_create_failed_ambiguously_is_resent_and_fills_once(worker, sim):
    # Given the same 503 on Bybit, which refuses a reused orderLinkId forever
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "bybit",
                    "operation": "create_order",
                    "kind": "server_error",
                    "count": 1,
                }
            ]
        }
    )

    summary = run_order(exchange="bybit", symbol=ETH, side="buy", amount="0.01")

    # Then a resend could not double it: sent again at once, one order on the exchange
    assert summary["status"] == "filled"
    assert sim.calls("bybit", "create_order") == 2
    assert len(sim.orders_for(summary["client_order_id"])) == 1
    assert attempt_classes(summary["client_order_id"]) == ["ambiguous", None]


def test_insufficient_margin_is_rejected_after_one_call(worker, sim):
    sim.faults({"rules": [{"exchange": "bybit", "kind": "insufficient_margin", "count": 1}]})

    summary = run_order(exchange="bybit", symbol=ETH, side="buy", amount="0.5")

    assert summary["status"] == "rejected"
    assert summary["error_class"] == "permanent"
    assert "InsufficientFunds" in summary["error"]
    assert sim.calls("bybit", "create_order") == 1
    assert sim.orders_for(summary["client_order_id"]) == []
    assert "order_rejected" in [e.type for e in events_for(summary["client_order_id"])]


@pytest.mark.parametrize("exchange", ["binance", "bybit", "okx"])
def test_timeout_after_accept_leaves_exactly_one_order_reported_filled(worker, sim, exchange):
    # Given the exchange accepts and fills the next create but the response never arrives
    sim.faults(
        {
            "rules": [
                {
                    "exchange": exchange,
                    "operation": "create_order",
                    "kind": "timeout_after_accept",
                    "count": 1,
                }
            ]
        }
    )

    summary = run_order(exchange=exchange, symbol=ETH, side="sell", amount="0.2")

    # Then one order exists, reported filled: Binance's and OKX's were found by a lookup;
    # Bybit's copy was sent again at once and refused as a duplicate, which proved it exists
    assert summary["status"] == "filled"
    assert len(sim.orders_for(summary["client_order_id"])) == 1
    creates = {"binance": 1, "bybit": 2, "okx": 1}[exchange]
    assert sim.calls(exchange, "create_order") == creates
    assert attempt_classes(summary["client_order_id"]) == ["ambiguous", "permanent"][:creates]


def test_binance_reuse_trap_visibility_lag_longer_than_first_lookup(worker, sim):
    # Given: accepted-then-timeout, and a fresh order stays invisible for 2 s.
    # Binance accepts a filled order's client id again, so a resubmit after a
    # lookup that came too early would fill a second order.
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "binance",
                    "operation": "create_order",
                    "kind": "timeout_after_accept",
                    "count": 1,
                },
                {"exchange": "binance", "kind": "visibility_lag", "lag_ms": 2000},
            ]
        }
    )

    summary = run_order(exchange="binance", symbol=BTC, side="buy", amount="0.02")

    assert summary["status"] == "filled"
    assert len(sim.orders_for(summary["client_order_id"])) == 1
    lookups = [
        e.payload["result"]
        for e in events_for(summary["client_order_id"])
        if e.type == "order_lookup"
    ]
    assert lookups[0] == "absent" and lookups[-1] == "found"


def test_same_signal_twice_places_one_order(worker, sim):
    from workers.producer import submit_market_order

    signal_id = new_signal()
    first = submit_market_order(signal_id, "binance", BTC, "buy", "0.01")
    second = submit_market_order(signal_id, "binance", BTC, "buy", "0.01")

    a, b = first.get(timeout=60), second.get(timeout=60)
    assert a["client_order_id"] == b["client_order_id"]
    assert a["status"] == b["status"] == "filled"
    assert len(sim.orders_for(a["client_order_id"])) == 1


def test_ten_concurrent_signals_on_one_symbol_make_ten_orders(worker, sim):
    from workers.producer import submit_market_order

    results = [submit_market_order(new_signal(), "bybit", ETH, "buy", "0.01") for _ in range(10)]
    summaries = [result.get(timeout=90) for result in results]

    assert [s["status"] for s in summaries] == ["filled"] * 10
    client_ids = {s["client_order_id"] for s in summaries}
    assert len(client_ids) == 10
    assert sorted(row["clientOrderId"] for row in sim.ledger()) == sorted(client_ids)


BAD_INPUTS = [
    ({"exchange": "kraken"}, "exchange"),
    ({"symbol": "NOPE/USDT:USDT"}, "symbol"),
    ({"side": "hold"}, "side"),
    ({"amount": "abc"}, "amount"),
    ({"amount": "-1"}, "amount"),
    ({"amount": "0"}, "amount"),
    ({"amount": "NaN"}, "amount"),
    ({"amount": "Infinity"}, "amount"),
    ({"amount": "0.0004"}, "amount"),  # rounds to zero at BTC's step of 0.001
    ({"amount": "0.003"}, "amount"),  # under BTC's minimum of 0.005
    ({"signal_id": "x" * 300}, "signal_id"),
    ({"metadata": {"blob": "y" * 10_000}}, "metadata"),
]


@pytest.mark.parametrize(("override", "field"), BAD_INPUTS)
def test_bad_input_fails_clearly_with_an_event_and_no_exchange_call(worker, sim, override, field):
    from workers.app import app
    from workers.store.db import session_scope
    from workers.store.models import Event

    kwargs = {
        "signal_id": new_signal(),
        "exchange": "binance",
        "symbol": BTC,
        "side": "buy",
        "amount": "0.01",
        "reduce_only": False,
        "purpose": "open",
        **override,
    }
    result = app.send_task("execute_market_order", kwargs=kwargs)

    with pytest.raises(Exception) as raised:
        result.get(timeout=60)
    assert field in str(raised.value)
    assert result.state == "FAILURE"
    with session_scope() as session:
        rejected = session.scalars(select(Event).where(Event.type == "signal_rejected")).all()
    assert [e.payload["field"] for e in rejected] == [field]
    assert sim.calls("binance", "create_order") == 0
    assert sim.ledger() == []


def test_kill_switch_refuses_opens_and_lets_reduce_only_pass(worker, sim):
    from workers.coordination import set_kill_switch

    opened = run_order(exchange="binance", symbol=ETH, side="buy", amount="0.1")
    assert opened["status"] == "filled"
    set_kill_switch(True, "test")
    try:
        refused = run_order(exchange="binance", symbol=ETH, side="buy", amount="0.1")
        closed = run_order(
            exchange="binance",
            symbol=ETH,
            side="sell",
            amount="0.1",
            reduce_only=True,
            purpose="close",
        )
    finally:
        set_kill_switch(False)

    assert refused["status"] == "rejected"
    assert refused["error_class"] == "kill_switch"
    assert sim.orders_for(refused["client_order_id"]) == []
    assert closed["status"] == "filled"
    assert len(sim.ledger()) == 2


def test_rate_limit_cooldown_holds_every_worker(workers, db, redis_clean, sim):
    # Given two workers, and the exchange answers the next create with 429 Retry-After: 2
    from workers.exchange.ratelimit import cooldown_remaining_s
    from workers.producer import submit_market_order

    workers.wait_ready(workers.spawn(concurrency=2), workers.spawn(concurrency=2))
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "bybit",
                    "operation": "create_order",
                    "kind": "rate_limit",
                    "count": 1,
                    "retry_after_s": 2,
                }
            ]
        }
    )

    # When one order hits the 429
    first = submit_market_order(new_signal(), "bybit", ETH, "buy", "0.01")
    wait_for(lambda: cooldown_remaining_s("bybit") > 0, 30, message="no cooldown was set")
    # and another order arrives during the cooldown (either worker may take it)
    second = submit_market_order(new_signal(), "bybit", ETH, "buy", "0.01")

    # Then no create reaches the exchange while the cooldown lasts: each ledger read
    # below was made before a look at the cooldown that found it still running
    accepted_during_cooldown: list[int] = []

    def cooldown_over() -> bool:
        accepted = len(sim.ledger())
        if cooldown_remaining_s("bybit") > 0:
            accepted_during_cooldown.append(accepted)
            return False
        return True

    wait_for(cooldown_over, 30, interval_s=0.05, message="the cooldown never ended")
    assert accepted_during_cooldown and set(accepted_during_cooldown) == {0}
    # and once it is over both orders fill
    a, b = first.get(timeout=60), second.get(timeout=60)
    assert a["status"] == b["status"] == "filled"
    assert attempt_classes(a["client_order_id"]) == ["rate_limited", None]
    assert len(sim.ledger()) == 2


def test_worker_killed_mid_create_leaves_exactly_one_order_after_recovery(
    workers, db, redis_clean, sim
):
    # Given the next create is accepted but its response hangs for 20 s
    from workers.app import app
    from workers.producer import submit_market_order

    first = workers.start(concurrency=2, env=KILLED_WORKER_ENV)
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "binance",
                    "operation": "create_order",
                    "kind": "timeout_after_accept",
                    "count": 1,
                    "hang_ms": 20000,
                }
            ]
        }
    )
    signal_id = new_signal()
    submit_market_order(signal_id, "binance", BTC, "buy", "0.01")
    wait_for(lambda: len(sim.ledger()) == 1, 30, message="the exchange never took the order")

    # When the worker is SIGKILLed while waiting for the response
    first.kill()
    # and a new worker starts and the recovery sweep runs
    workers.start(concurrency=2)
    from workers.execution.client_ids import client_order_id

    cid = client_order_id(signal_id, "open")
    assert order_row(cid).status in ("submitting", "unknown")

    def resolved() -> bool:
        app.send_task("recovery_sweep").get(timeout=60)
        return order_row(cid).status == "filled"

    wait_for(resolved, 60, interval_s=1, message="recovery did not resolve the order")

    # Then the exchange has exactly one order for that signal, and the book has it
    assert len(sim.orders_for(cid)) == 1
    wait_for(
        lambda: order_row(cid).position_id is not None,
        30,
        message="the recovered fill was not booked",
    )


@pytest.mark.parametrize("exchange", ["binance", "bybit", "okx"])
def test_limit_order_rests_then_fills_when_the_price_crosses(worker, sim, exchange):
    from workers.producer import submit_limit_order

    sim.prices({"exchange": exchange, "symbol": ETH, "price": "3500"})
    result = submit_limit_order(new_signal(), exchange, ETH, "buy", "0.1", "3400")
    wait_for(
        lambda: any(row["status"] == "open" for row in sim.ledger()),
        30,
        message="the limit order never rested on the book",
    )

    # The task ends when the exchange has accepted the order: it rests, the result says so
    accepted = result.get(timeout=60)
    assert accepted["status"] == "open" and accepted["order_id"]

    # When the price crosses and the tracker follows the order
    sim.prices({"exchange": exchange, "symbol": ETH, "price": "3390"})
    from workers.app import app

    def final() -> dict | None:
        app.send_task("order_tracking_sweep").get(timeout=30)
        summary = app.AsyncResult(result.id).result
        return summary if summary["status"] == "filled" else None

    # Then the producer's result is replaced by the final one
    summary = wait_for(final, 60, interval_s=0.5, message="the fill was never recorded")
    assert Decimal(summary["average_price"]) <= Decimal("3400")
    types = [e.type for e in events_for(summary["client_order_id"])]
    assert types.index("order_submitted") < types.index("order_filled")
    # and the fill is verified and booked into a position
    wait_for(
        lambda: order_row(summary["client_order_id"]).booked_filled == Decimal("0.1"),
        30,
        message="the tracked fill was not booked",
    )


def test_ioc_limit_that_cannot_fill_ends_canceled_with_nothing_filled(worker, sim):
    from workers.producer import submit_limit_order

    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3500"})
    summary = submit_limit_order(
        new_signal(), "bybit", ETH, "buy", "0.1", "3000", time_in_force="IOC"
    ).get(timeout=60)

    assert summary["status"] in ("canceled", "expired")
    assert Decimal(summary["filled"]) == 0
