"""The exactly-once edges of the order lifecycle, through real workers, Redis, Postgres and
ccxt clients against the simulator. The simulator's ledger is the exchange's own record:
"once" is asserted there.

Each test pins one way an order used to be doubled, lost or misreported: an ambiguous
open past the visibility window, a duplicate client id refusal, twin deliveries, the
kill switch during a retry, a paused worker, a refused key, resting orders and cancels.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from decimal import Decimal

from sqlalchemy import select

from tests.conftest import ROOT, book_size, cid_of, order_of, wait_for

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


def new_signal() -> str:
    return f"lc-{uuid.uuid4().hex[:12]}"


def events_of(client_order_id: str) -> list:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        return list(
            session.scalars(
                select(Event).where(Event.client_order_id == client_order_id).order_by(Event.id)
            )
        )


def alerts(kind: str) -> list:
    from workers.store.db import session_scope
    from workers.store.models import Alert

    with session_scope() as session:
        return list(session.scalars(select(Alert).where(Alert.kind == kind)))


def track() -> dict:
    from workers.app import app

    return app.send_task("order_tracking_sweep").get(timeout=60)


def market(signal_id: str, exchange: str, symbol: str, side: str, amount: str):
    from workers.producer import submit_market_order

    return submit_market_order(signal_id, exchange, symbol, side, amount)


def execq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def hidden_after_accept(exchange: str, lag_ms: int) -> dict:
    """The next create is accepted (and fills) but its answer never arrives, and the order
    stays invisible to every lookup for ``lag_ms`` (longer than the visibility window)."""
    return {
        "rules": [
            {
                "exchange": exchange,
                "operation": "create_order",
                "kind": "timeout_after_accept",
                "count": 1,
            },
            {"exchange": exchange, "kind": "visibility_lag", "lag_ms": lag_ms},
        ]
    }


# --- an open whose outcome is ambiguous --------------------------------------------------


def test_a_binance_open_hidden_past_the_window_is_never_resent_and_is_adopted_once_seen(
    worker, sim
):
    # Given Binance accepts the create, the answer is lost, and the order stays hidden for
    # 12 s, past the visibility window (about 6 s in the test settings)
    sim.faults(hidden_after_accept("binance", 12_000))
    signal_id = new_signal()
    cid = cid_of(signal_id)

    # When the order is sent
    summary = market(signal_id, "binance", BTC, "buy", "0.03").get(timeout=90)

    # Then it is unknown with a critical alert, and was not sent again: Binance would
    # have accepted the same client id a second time and filled it twice
    assert summary["status"] == "unknown"
    assert sim.calls("binance", "create_order") == 1
    assert len(alerts("order_unknown")) == 1

    # When the order shows up on the exchange, the tracker adopts it
    def filled() -> bool:
        track()
        return order_of(cid).status == "filled"

    wait_for(filled, 60, interval_s=1, message="the hidden order was never adopted")
    # Then one order exists on the exchange, and the book holds its fill once
    assert len(sim.orders_for(cid)) == 1
    wait_for(lambda: book_size("binance", BTC) == Decimal("0.03"), 30, message="not booked once")


def test_a_bybit_duplicate_client_id_refusal_means_the_order_exists_never_rejected(worker, sim):
    # Given the same on Bybit: its resend is refused as a duplicate orderLinkId (110072)
    sim.faults(hidden_after_accept("bybit", 12_000))
    signal_id = new_signal()
    cid = cid_of(signal_id)

    summary = market(signal_id, "bybit", ETH, "buy", "0.1").get(timeout=90)

    # Then the refusal proved the order exists: it is never recorded as rejected
    assert summary["status"] != "rejected"
    classes = [e.error_class for e in events_of(cid) if e.type == "order_attempt"]
    assert classes[:2] == ["ambiguous", "permanent"]

    def filled() -> bool:
        track()
        return order_of(cid).status == "filled"

    wait_for(filled, 60, interval_s=1, message="the order the duplicate proved was never adopted")
    assert len(sim.orders_for(cid)) == 1
    assert order_of(cid).filled == Decimal("0.1")


# --- twins, the kill switch, a paused worker, a refused key --------------------------------


def test_twin_deliveries_wait_for_each_other_and_never_search_the_window(worker, sim):
    from workers.app import app

    # Given the same signal delivered twice at the same moment (a broker redelivery race)
    signal_id = new_signal()
    kwargs = {
        "signal_id": signal_id,
        "exchange": "binance",
        "symbol": BTC,
        "side": "buy",
        "amount": "0.01",
    }
    task_id = str(uuid.uuid4())
    first = app.send_task("execute_market_order", kwargs=kwargs, task_id=task_id)
    second = app.send_task("execute_market_order", kwargs=kwargs, task_id=task_id)

    # Then both answer filled, the exchange got one create, and neither looked the order
    # up: the second waited for the first's lease and read its outcome
    assert first.get(timeout=60)["status"] == "filled"
    assert second.get(timeout=60)["status"] == "filled"
    cid = cid_of(signal_id)
    assert len(sim.orders_for(cid)) == 1
    assert sim.calls("binance", "create_order") == 1
    assert [e for e in events_of(cid) if e.type == "order_lookup"] == []


def test_the_kill_switch_stops_an_open_that_is_waiting_out_a_rate_limit(worker, sim):
    from workers.coordination import set_kill_switch
    from workers.exchange.ratelimit import cooldown_remaining_s

    # Given the exchange answers the create with 429, Retry-After 3 s
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "bybit",
                    "operation": "create_order",
                    "kind": "rate_limit",
                    "count": 1,
                    "retry_after_s": 3,
                }
            ]
        }
    )
    signal_id = new_signal()
    result = market(signal_id, "bybit", ETH, "buy", "0.1")
    wait_for(lambda: cooldown_remaining_s("bybit") > 0, 30, message="no 429 was answered")

    # When the kill switch is turned on while the open waits to be sent again
    set_kill_switch(True, "drill")
    try:
        summary = result.get(timeout=60)
    finally:
        set_kill_switch(False)

    # Then the resend read the switch: refused, nothing reached the exchange
    assert (summary["status"], summary["error_class"]) == ("rejected", "kill_switch")
    assert sim.calls("bybit", "create_order") == 1
    assert sim.orders_for(summary["client_order_id"]) == []


# A worker with a short run budget, so that its lease on an order (budget + request
# timeout + 5 s) expires while it is paused: 3 + 1 + 5 = 9 s.
SHORT_LEASE_ENV = {"EXECQ_TASK_SOFT_TIME_LIMIT_S": "5"}


def test_a_paused_workers_late_create_is_refused_by_the_exchange(workers, db, redis_clean, sim):
    from workers.exchange.ratelimit import set_cooldown

    # Given a worker (its markets and the price already read by an earlier order) whose
    # create, signed and about to leave, waits out a cooldown
    paused = workers.start(concurrency=2, env=SHORT_LEASE_ENV)
    assert market(new_signal(), "binance", BTC, "buy", "0.01").get(timeout=60)["status"] == (
        "filled"
    )
    set_cooldown("binance", 4.0)
    signal_id = new_signal()
    cid = cid_of(signal_id)
    market(signal_id, "binance", BTC, "buy", "0.01")
    wait_for(
        lambda: (order := order_of(cid)) is not None and order.status == "submitting",
        30,
        interval_s=0.02,
        message="the order never got to submitting",
    )

    # When the worker is stopped (a paused VM) past its lease, and another worker's
    # tracker takes the order over meanwhile
    paused.signal_group(signal.SIGSTOP)
    try:
        other = workers.start(concurrency=2)

        def taken_over() -> bool:
            track()
            order = order_of(cid)
            return order.status == "unknown" and order.alerted_at is not None

        wait_for(taken_over, 60, interval_s=1, message="the tracker did not take the order over")
    finally:
        paused.signal_group(signal.SIGCONT)

    # Then the resumed worker's request, signed before the pause, is refused by the
    # exchange as stale; it never executes, and nothing is sent again
    def refused_as_stale() -> bool:
        return any(
            "StaleRequest" in (e.payload.get("error") or "")
            for e in events_of(cid)
            if e.type == "order_attempt"
        )

    wait_for(refused_as_stale, 60, message="the late create was not refused")
    assert sim.orders_for(cid) == [] and len(sim.ledger()) == 1
    assert order_of(cid).status == "unknown"
    assert other.alive


def test_a_create_that_arrives_after_its_validity_window_never_executes(workers, db, sim):
    # Given creates signed valid for 1 s, and the exchange receiving the next one 2 s late
    workers.start(
        concurrency=2,
        env={"EXECQ_RECV_WINDOW_MS": "1000", "EXECQ_EXCHANGE_TIMEOUT_MS": "5000"},
    )
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "binance",
                    "operation": "create_order",
                    "kind": "latency",
                    "latency_ms": 2000,
                    "count": 1,
                }
            ]
        }
    )
    signal_id = new_signal()

    summary = market(signal_id, "binance", BTC, "buy", "0.01").get(timeout=60)

    # Then the late request was refused (recvWindow) and did not execute, so sending it
    # again was safe: one order on the exchange
    assert summary["status"] == "filled"
    cid = summary["client_order_id"]
    assert len(sim.orders_for(cid)) == 1
    attempts = [e for e in events_of(cid) if e.type == "order_attempt"]
    assert "StaleRequest" in attempts[0].payload["error"]
    assert summary["attempts"] == 2


def test_a_refused_key_rejects_at_once_and_refuses_the_account_until_it_works(worker, sim):
    from workers.app import app

    # Given the exchange refuses the account's key on every create
    sim.faults({"rules": [{"exchange": "bybit", "kind": "auth_refused"}]})

    # When an order is sent
    first = market(new_signal(), "bybit", ETH, "buy", "0.1").get(timeout=60)

    # Then it is rejected at once (no retries as if unreachable), with a critical alert
    assert (first["status"], first["error_class"]) == ("rejected", "account")
    assert sim.calls("bybit", "create_order") == 1
    assert [a.account for a in alerts("account_auth_failed")] == ["bybit"]
    # and the next open on that account is refused without reaching the exchange
    second = market(new_signal(), "bybit", ETH, "buy", "0.1").get(timeout=60)
    assert (second["status"], second["error_class"]) == ("rejected", "account")
    assert sim.calls("bybit", "create_order") == 1

    # When the key works again (the recovery sweep's positions read succeeds)
    sim.faults({})
    assert app.send_task("recovery_sweep").get(timeout=90)["accounts_restored"] == 1
    # Then orders go through
    assert market(new_signal(), "bybit", ETH, "buy", "0.1").get(timeout=60)["status"] == "filled"


# --- resting orders and cancels -----------------------------------------------------------


def limit(signal_id: str, exchange: str, symbol: str, side: str, amount: str, price: str):
    from workers.producer import submit_limit_order

    return submit_limit_order(signal_id, exchange, symbol, side, amount, price)


def test_a_resting_order_ends_its_task_and_a_cancel_ends_the_order(worker, sim):
    from workers.app import app

    # Given a GTC buy resting below the market
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    signal_id = new_signal()
    result = limit(signal_id, "binance", ETH, "buy", "0.1", "3000")

    # Then its task ends when the exchange has accepted it: a success, not a requeue loop
    accepted = result.get(timeout=60)
    assert (result.state, accepted["status"]) == ("SUCCESS", "open")

    # When it is canceled by its signal id
    canceled = app.send_task("cancel_order", kwargs={"signal_id": signal_id}).get(timeout=60)

    # Then the exchange has it canceled, the record says so, and so does the producer's result
    cid = cid_of(signal_id)
    assert canceled["status"] == "canceled"
    assert [row["status"] for row in sim.orders_for(cid)] == ["canceled"]
    assert "order_canceled" in [e.type for e in events_of(cid)]
    assert app.AsyncResult(result.id).result["status"] == "canceled"
    # A second cancel changes nothing
    again = app.send_task("cancel_order", kwargs={"client_order_id": cid}).get(timeout=60)
    assert again["status"] == "canceled"
    # and `execq events --order` shows the order's end
    shown = execq("events", "--order", cid, "--json")
    assert shown.returncode == 0, shown.stderr
    assert "order_canceled" in [json.loads(line)["type"] for line in shown.stdout.splitlines()]


def test_a_cancel_that_comes_after_the_fill_records_and_books_the_fill(worker, sim):
    from workers.app import app

    # Given a resting order that fills on the exchange before anyone follows it
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3500"})
    signal_id = new_signal()
    assert limit(signal_id, "bybit", ETH, "buy", "0.1", "3400").get(timeout=60)["status"] == "open"
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3390"})
    cid = cid_of(signal_id)
    wait_for(
        lambda: [row["status"] for row in sim.orders_for(cid)] == ["closed"],
        30,
        message="the order never filled on the exchange",
    )

    # When it is canceled
    ended = app.send_task("cancel_order", kwargs={"client_order_id": cid}).get(timeout=60)

    # Then the exchange refused the cancel, and the lookup after it recorded the fill
    assert ended["status"] == "filled"
    wait_for(
        lambda: book_size("bybit", ETH) == Decimal("0.1"),
        30,
        message="the fill found by the cancel was not booked",
    )


def test_execq_cancel_cancels_every_open_order_of_an_account_and_symbol(worker, sim):
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    first, second = new_signal(), new_signal()
    assert limit(first, "binance", ETH, "buy", "0.1", "3000").get(timeout=60)["status"] == "open"
    assert limit(second, "binance", ETH, "sell", "0.1", "4000").get(timeout=60)["status"] == "open"

    done = execq("cancel", "--exchange", "binance", "--symbol", ETH, "--json")

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[-1])
    assert sorted(row["status"] for row in answer["canceled"]) == ["canceled", "canceled"]
    assert {row["status"] for row in sim.ledger()} == {"canceled"}


def test_liquidation_cancels_resting_orders_before_it_closes_positions(worker, sim):
    from workers.app import app

    # Given a position, and a GTC buy resting below the market
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    assert market(new_signal(), "binance", ETH, "buy", "0.2").get(timeout=60)["status"] == "filled"
    resting = new_signal()
    assert limit(resting, "binance", ETH, "buy", "0.1", "3000").get(timeout=60)["status"] == "open"

    # When everything is liquidated
    summary = app.send_task("emergency_liquidate_all", kwargs={"reason": "drill"}).get(timeout=120)
    try:
        # Then the resting order was canceled first, the position closed, and a price move
        # across the old limit fills nothing new
        assert [row["status"] for row in sim.orders_for(cid_of(resting))] == ["canceled"]
        assert summary["orders_still_open"] == [] and summary["closed"] == 1
        sim.prices({"exchange": "binance", "symbol": ETH, "price": "2900"})
        assert [p for p in sim.positions() if p["exchange"] == "binance"] == []
    finally:
        from workers.coordination import set_kill_switch

        set_kill_switch(False)
