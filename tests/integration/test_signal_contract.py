"""The signal contract through a real worker, the producer and the CLI: every bad input is
refused with one line and an event before it reaches the exchange; a signal id is an
idempotency key; the result has one format.

Messages are sent the way a plain Celery client sends them (``send_task`` by name), so
nothing on the producer's side filters them first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update

from tests.conftest import ROOT, wait_for
from workers.execution.signal import OrderResult

ETH = "ETH/USDT:USDT"
BTC = "BTC/USDT:USDT"
MARKET = "execute_market_order"
LIMIT = "execute_limit_order"
# What loading an account's markets asks the exchange; anything else is a request about
# an order, a price or a position, which no refused signal may cause.
MARKET_METADATA_READS = {"markets", "account", "other", "time"}


def new_signal() -> str:
    return f"contract-{uuid.uuid4().hex[:16]}"


def base_kwargs(**overrides) -> dict:
    return {
        "signal_id": new_signal(),
        "exchange": "binance",
        "symbol": ETH,
        "side": "buy",
        "amount": "0.1",
        **overrides,
    }


def send(task: str, kwargs: dict, args: tuple = ()):
    from workers.app import app

    return app.send_task(task, args=list(args), kwargs=kwargs)


def events(*types: str) -> list:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        query = select(Event).order_by(Event.id)
        if types:
            query = query.where(Event.type.in_(types))
        return list(session.scalars(query))


def count(model, *where) -> int:
    from workers.store.db import session_scope

    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def order_rows() -> int:
    from workers.store.models import Order

    return count(Order)


def trading_requests(before: dict, after: dict) -> dict:
    """Requests the exchange served between two ``/_sim/stats`` reads, but market loading."""
    return {
        (exchange, operation): n - before.get(exchange, {}).get(operation, 0)
        for exchange, operations in after.items()
        for operation, n in operations.items()
        if operation not in MARKET_METADATA_READS
        and n != before.get(exchange, {}).get(operation, 0)
    }


def refused_line(result) -> str:
    """The task's failure message: it must fail, with one short printable line."""
    with pytest.raises(Exception) as raised:
        result.get(timeout=60)
    assert result.state == "FAILURE"
    line = str(raised.value)
    assert line.isprintable() and len(line) <= 200, repr(line)
    return line


HUGE = "x" * 1_000_000

# Point 3 of the contract's bad inputs (each failed without a signal_rejected event
# before), the symbol aliases that used to trade the perpetual, and their neighbours.
BAD_SIGNALS = [
    pytest.param(
        MARKET, {"signal_id": "nul\x00id"}, "signal_id", "non-printable", id="nul-signal-id"
    ),
    pytest.param(
        MARKET, {"exchange": "bin\x00ance"}, "exchange", "unknown account", id="nul-exchange"
    ),
    pytest.param(
        MARKET, {"symbol": "ETH/USDT:USDT\x00"}, "symbol", "non-printable", id="nul-symbol"
    ),
    pytest.param(MARKET, {"metadata": {"note": "a\x00b"}}, "metadata", "NUL", id="nul-metadata"),
    pytest.param(
        MARKET, {"position_id": 987654321}, "position_id", "no row", id="position-missing"
    ),
    pytest.param(MARKET, {"position_id": 0}, "position_id", "from 1", id="position-zero"),
    pytest.param(MARKET, {"position_id": -3}, "position_id", "from 1", id="position-negative"),
    pytest.param(MARKET, {"position_id": 2**63}, "position_id", "from 1", id="position-over-int64"),
    pytest.param(MARKET, {"aged_id": 987654321}, "aged_id", "no row", id="aged-missing"),
    pytest.param(MARKET, {"aged_id": 0}, "aged_id", "from 1", id="aged-zero"),
    pytest.param(MARKET, {"aged_id": 2**63}, "aged_id", "from 1", id="aged-over-int64"),
    pytest.param(LIMIT, {"price": "1e19"}, "price", "out of range", id="limit-price-1e19"),
    pytest.param(LIMIT, {"price": "1e25"}, "price", "out of range", id="limit-price-1e25"),
    pytest.param(LIMIT, {"price": "10000000"}, "price", "maximum price", id="limit-price-over-max"),
    pytest.param(MARKET, {"amount": None}, "amount", "decimal string", id="amount-null"),
    pytest.param(
        MARKET, {"side": None, "amount": "0.1"}, "side", "'buy' or 'sell'", id="side-null"
    ),
    pytest.param(MARKET, {"foo": 1}, "foo", "not an argument", id="unknown-keyword"),
    pytest.param(MARKET, {"price": "3000"}, "price", "only for limit orders", id="price-on-market"),
    pytest.param(
        MARKET, {"time_in_force": "IOC"}, "time_in_force", "only for limit", id="tif-on-market"
    ),
    pytest.param(
        MARKET, {"amount": "2500"}, "amount", "market-order maximum 2000", id="over-market-max"
    ),
    pytest.param(
        MARKET, {"symbol": "E" * 10_000}, "symbol", "more than the maximum 64", id="symbol-10k"
    ),
    pytest.param(MARKET, {"side": HUGE}, "side", "'buy' or 'sell'", id="side-1mb"),
    pytest.param(MARKET, {"leg": ""}, "leg", "1-12 lowercase", id="empty-leg"),
    pytest.param(MARKET, {"purpose": "open\n"}, "purpose", "lowercase word", id="purpose-newline"),
    pytest.param(MARKET, {"leg": "open\n"}, "leg", "1-12 lowercase", id="leg-newline"),
    pytest.param(
        MARKET,
        {"symbol": "ETH/USDT:USDT\nforged=line"},
        "symbol",
        "non-printable",
        id="symbol-newline",
    ),
    pytest.param(
        MARKET, {"exchange": "binance\nforged=line"}, "exchange", "unknown", id="exchange-newline"
    ),
    pytest.param(MARKET, {"signal_id": "s" * 300}, "signal_id", "maximum 64", id="signal-id-300"),
    pytest.param(MARKET, {"amount": 0.1}, "amount", "decimal string", id="float-amount"),
    pytest.param(
        MARKET, {"symbol": "ETH/USDT"}, "symbol", "use 'ETH/USDT:USDT'", id="alias-binance-eth"
    ),
    pytest.param(
        MARKET,
        {"symbol": "BTC/USDT", "amount": "0.01"},
        "symbol",
        "use 'BTC/USDT:USDT'",
        id="alias-binance-btc",
    ),
    pytest.param(
        MARKET,
        {"exchange": "bybit", "symbol": "ETHUSDT"},
        "symbol",
        "alias on bybit; use 'ETH/USDT:USDT'",
        id="alias-bybit-exchange-id",
    ),
    pytest.param(
        MARKET, {"symbol": "NOPE/USDT:USDT"}, "symbol", "unknown symbol", id="unknown-symbol"
    ),
]


@pytest.mark.parametrize(("task", "override", "field", "says"), BAD_SIGNALS)
def test_a_bad_signal_is_refused_with_one_line_and_an_event_before_the_exchange(
    worker, sim, task, override, field, says
):
    # Given a message as a plain Celery client sends it, with one bad argument
    kwargs = base_kwargs(**({"price": "3000"} if task == LIMIT else {}))
    kwargs.update(override)
    before = sim.stats()

    # When a worker receives it
    result = send(task, kwargs)
    line = refused_line(result)

    # Then the task failed with one short line naming the field
    assert line.startswith(f"{field}: ") and says in line, line
    # and one signal_rejected event records that line, tied to the task
    (rejected,) = events("signal_rejected")
    assert rejected.payload["reason"] == line
    assert rejected.payload["field"] == field
    assert rejected.payload["task_id"] == result.id
    assert len(json.dumps(rejected.payload)) < 1000
    for column in (rejected.signal_id, rejected.account, rejected.symbol):
        assert column is None or (column.isprintable() and "\x00" not in column)
    # and nothing became an order or reached the exchange
    assert order_rows() == 0
    assert sim.ledger() == []
    assert trading_requests(before, sim.stats()) == {}


def test_a_forged_newline_never_starts_a_log_line(worker, sim):
    # Given a symbol and an exchange that carry a second "log line"
    for override in ({"symbol": f"{ETH}\nFORGED-LINE"}, {"exchange": "binance\nFORGED-LINE"}):
        refused_line(send(MARKET, base_kwargs(**override)))

    # Then the worker's log has no line starting with it
    log = worker.log_path.read_text(errors="replace")
    assert not [line for line in log.splitlines() if line.startswith("FORGED-LINE")]


def test_a_missing_argument_and_positional_arguments_are_refused_by_name(worker, sim):
    # Given a message without its amount, and one with positional arguments
    kwargs = base_kwargs()
    del kwargs["amount"]
    missing = send(MARKET, kwargs)
    positional = send(MARKET, {}, args=(new_signal(), "binance", ETH, "buy", "0.1"))

    # Then both are refused as signals, not as Celery TypeErrors
    assert refused_line(missing) == "amount: is required"
    assert refused_line(positional).startswith("arguments: 5 positional argument(s)")
    assert len(events("signal_rejected")) == 2
    assert sim.ledger() == []


def test_a_refused_signal_is_not_retried(worker, sim):
    # When an invalid message is refused
    result = send(MARKET, base_kwargs(amount="-1"))
    refused_line(result)

    # Then it ran once: one event, no requeue or retry recorded
    assert result.result.__class__.__name__ == "SignalRejected"
    assert len(events("signal_rejected")) == 1
    assert events("order_requeued") == []


# --- idempotency --------------------------------------------------------------------------


def test_the_same_signal_again_answers_the_first_orders_result_in_the_same_format(worker, sim):
    # Given a filled order
    kwargs = base_kwargs(amount="0.3")
    first = send(MARKET, kwargs).get(timeout=60)
    assert first["status"] == "filled"

    # When the same signal is sent again (other metadata, the same order)
    again = send(MARKET, {**kwargs, "amount": "0.30", "metadata": {"retry": 1}}).get(timeout=60)

    # Then it answers the first order's result, byte for byte, and placed nothing more
    assert again == first
    assert first["filled"] == first["amount"] == first["requested"] == "0.3"
    assert len(sim.ledger()) == 1


def test_the_same_signal_id_for_another_order_is_refused_as_a_conflict(worker, sim):
    # Given ETH buy 0.3 filled under a signal id
    kwargs = base_kwargs(amount="0.3")
    assert send(MARKET, kwargs).get(timeout=60)["status"] == "filled"

    # When BTC sell 0.5 arrives under the same signal id
    other = send(MARKET, {**kwargs, "symbol": BTC, "side": "sell", "amount": "0.5"})

    # Then it is refused, naming what differs, with a signal_conflict event
    line = refused_line(other)
    assert line.startswith("signal_id: ") and "differs in symbol" in line
    assert "side 'buy'->'sell'" in line and "amount '0.3'->'0.5'" in line
    (conflicted,) = events("signal_conflict")
    assert conflicted.payload["fields"] == ["symbol", "side", "amount"]
    assert conflicted.payload["reason"] == line
    # and only the first order exists
    assert len(sim.ledger()) == 1 and order_rows() == 1


def test_the_producer_answers_the_same_signal_with_its_first_message(worker, sim):
    from workers.producer import submit_market_order
    from workers.store.models import Signal

    signal_id = new_signal()
    first = submit_market_order(signal_id, "binance", ETH, "buy", "0.3")
    again = submit_market_order(signal_id, "binance", ETH, "buy", "0.300")

    assert again.id == first.id
    result = first.get(timeout=60)
    assert again.get(timeout=60) == result
    assert set(result) == set(OrderResult.model_fields)
    assert (result["requested"], result["amount"], result["filled"]) == ("0.3", "0.3", "0.3")
    assert count(Signal, Signal.signal_id == signal_id) == 1
    assert len(sim.ledger()) == 1


def test_the_producer_refuses_another_order_under_a_recorded_signal_id(worker, sim):
    from workers.producer import SignalConflict, submit_limit_order, submit_market_order
    from workers.store.models import Signal

    # Given a recorded signal
    signal_id = new_signal()
    submit_market_order(signal_id, "binance", ETH, "buy", "0.3").get(timeout=60)

    # When another order is submitted under its id
    with pytest.raises(SignalConflict) as raised:
        submit_limit_order(signal_id, "binance", ETH, "buy", "0.3", "3000")

    # Then it is refused before being recorded or enqueued, with an event
    assert "differs in order_type 'market'->'limit'" in str(raised.value)
    assert count(Signal, Signal.signal_id == signal_id) == 1
    assert [e.type for e in events("signal_conflict")] == ["signal_conflict"]
    assert len(sim.ledger()) == 1


def test_two_producers_racing_one_signal_id_record_one_message(worker, sim):
    from concurrent.futures import ThreadPoolExecutor

    from workers.producer import SignalConflict, submit_market_order
    from workers.store.models import Signal

    signal_id = new_signal()

    def submit(side: str):
        try:
            return submit_market_order(signal_id, "binance", ETH, side, "0.1")
        except SignalConflict as conflict:
            return conflict

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(submit, ["buy", "sell", "buy", "sell"]))

    # Then one side won: its messages share one task id, the other side was refused
    sent = {outcome.id for outcome in outcomes if not isinstance(outcome, SignalConflict)}
    conflicts = [outcome for outcome in outcomes if isinstance(outcome, SignalConflict)]
    assert len(sent) == 1 and len(conflicts) == 2
    assert count(Signal, Signal.signal_id == signal_id) == 1
    wait_for(lambda: len(sim.ledger()) == 1, 30, message="the one order never reached the exchange")


# --- through the outbox -------------------------------------------------------------------


def test_the_producer_refuses_a_bad_signal_before_recording_it(worker, sim):
    from workers.producer import SignalRejected, submit_market_order
    from workers.redis_client import get_redis
    from workers.store.models import Signal

    with pytest.raises(SignalRejected) as raised:
        submit_market_order(new_signal(), "binance", "ETH/USDT\n", "buy", "0.1")

    assert str(raised.value).startswith("symbol: ")
    assert count(Signal) == 0 and get_redis().llen("celery") == 0
    (rejected,) = events("signal_rejected")
    assert rejected.payload["reason"] == str(raised.value)


@pytest.mark.parametrize(
    "override",
    [{"signal_id": "s" * 300}, {"symbol": "ETHUSDT"}, {"purpose": "open\n"}, {"amount": "5000"}],
    ids=["signal-id-300", "alias", "purpose-newline", "over-market-max"],
)
def test_a_bad_signal_already_in_the_outbox_settles_as_arrived_not_undelivered(
    worker, sim, override
):
    # Given a bad message recorded without the producer's checks (an older producer)
    from workers.app import app
    from workers.flows.recovery import redeliver_lost_signals
    from workers.settings import get_settings
    from workers.store.db import get_engine, session_scope
    from workers.store.models import Alert, Signal
    from workers.store.outbox import OutboxMessage, record_signals

    message = OutboxMessage.new(MARKET, base_kwargs(**override))
    with get_engine().begin() as connection:
        record_signals(connection, [message])
    result = app.send_task(MARKET, kwargs=message.kwargs, task_id=message.task_id)
    refused_line(result)

    # When the recovery sweep looks at the outbox long after
    with session_scope() as session:
        session.execute(
            update(Signal).values(
                created_at=Signal.created_at - timedelta(seconds=600),
                last_sent_at=Signal.last_sent_at - timedelta(seconds=600),
            )
        )
    counts = redeliver_lost_signals(get_settings(), datetime.now(UTC))

    # Then the refusal settled it: not sent again, no undelivered alert
    assert dict(counts) == {"signals_arrived": 1}
    with session_scope() as session:
        assert session.get(Signal, message.task_id).outcome == "arrived"
    assert count(Alert) == 0
    assert sim.ledger() == []


# --- the result ---------------------------------------------------------------------------


def test_an_amount_floored_to_the_step_is_recorded_and_reported_as_floored(worker, sim):
    from workers.store.orders import load_order

    asked = "0.123456789012345678901234567890"
    summary = send(MARKET, base_kwargs(amount=asked)).get(timeout=60)

    assert summary["requested"] == "0.12345678901234567890123456789"
    assert summary["amount"] == summary["filled"] == "0.123"
    row = load_order(summary["client_order_id"])
    assert row.requested_amount == Decimal(asked) and row.amount == Decimal("0.123")
    (intent,) = [e for e in events("order_intent")]
    assert Decimal(intent.payload["requested"]) == Decimal(asked)


def test_a_fill_after_a_failed_attempt_carries_no_error(worker, sim):
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "binance",
                    "operation": "create_order",
                    "kind": "rate_limit",
                    "retry_after_s": 0,
                    "count": 1,
                }
            ]
        }
    )

    summary = send(MARKET, base_kwargs()).get(timeout=60)

    assert summary["status"] == "filled"
    assert summary["error"] is None and summary["error_class"] is None
    assert [e.error_class for e in events("order_attempt")][0] == "rate_limited"


def test_an_unfilled_ioc_reports_zero_as_0(worker, sim):
    sim.prices({"exchange": "bybit", "symbol": ETH, "price": "3500"})

    summary = send(LIMIT, base_kwargs(exchange="bybit", price="3000", time_in_force="IOC")).get(
        timeout=60
    )

    assert summary["status"] in ("canceled", "expired")
    assert summary["filled"] == "0"


# --- the CLI ------------------------------------------------------------------------------


def execq(*args: str, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_execq_signal_exits_0_only_for_a_fill_or_a_resting_limit(worker, sim):
    from workers.coordination import set_kill_switch

    signal_id = new_signal()
    # A fill: 0, and the same signal again answers the same result
    filled = execq(
        "signal", "binance", "buy", "0.1", ETH, "--signal-id", signal_id, "--wait", "60", "--json"
    )
    assert filled.returncode == 0, filled.stderr
    again = execq(
        "signal", "binance", "buy", "0.1", ETH, "--signal-id", signal_id, "--wait", "60", "--json"
    )
    assert again.returncode == 0, again.stderr
    result = json.loads(filled.stdout)["result"]
    assert json.loads(again.stdout)["result"] == result
    assert set(result) == set(OrderResult.model_fields)
    assert (result["status"], result["filled"], result["error"]) == ("filled", "0.1", None)

    # Another order under that signal id: 1, one line naming the conflict
    other = execq("signal", "binance", "sell", "0.1", ETH, "--signal-id", signal_id, "--wait", "60")
    assert other.returncode == 1
    assert other.stderr.startswith("execq: refused: signal_id: ") and "side" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1

    # A limit order without --wait: 0 once enqueued; waiting: 0 too once the exchange has
    # accepted it (its task ends there, and the order rests on the book)
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    enqueued = execq("signal", "binance", "buy", "0.1", ETH, "--limit", "3000")
    assert enqueued.returncode == 0, enqueued.stderr
    resting = execq(
        "signal", "binance", "buy", "0.1", ETH, "--limit", "3000", "--wait", "60", "--json"
    )
    assert resting.returncode == 0, resting.stderr
    assert json.loads(resting.stdout)["result"]["status"] == "open"

    # No result within --wait (the exchange is slow to answer): 3, naming the order's state
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "binance",
                    "operation": "create_order",
                    "kind": "latency",
                    "latency_ms": 4000,
                    "count": 1,
                }
            ]
        }
    )
    slow = execq("signal", "binance", "buy", "0.1", ETH, "--limit", "3000", "--wait", "1")
    assert slow.returncode == 3, slow.stderr
    assert "may still execute" in slow.stderr and "Traceback" not in slow.stderr
    assert len(slow.stderr.strip().splitlines()) == 1
    sim.faults({})
    # (the price crosses, so both fill and their tasks end)
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "2990"})
    wait_for(
        lambda: [row["status"] for row in sim.ledger()].count("closed") == 4,
        30,
        message=f"the resting limit orders never filled: {sim.ledger()}",
    )

    # The kill switch: 1 with the reason
    set_kill_switch(True, "drill")
    try:
        blocked = execq("signal", "binance", "buy", "0.1", ETH, "--wait", "60")
    finally:
        set_kill_switch(False)
    assert blocked.returncode == 1
    assert "order rejected: kill switch on" in blocked.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["kraken", "buy", "1", ETH], "exchange: unknown account 'kraken'"),
        (["binance", "buy", "abc", ETH], "amount: is not a decimal number"),
        (["binance", "buy", "1", "ETHUSDT"], "use 'ETH/USDT:USDT'"),
        (["binance", "buy", "2500", ETH, "--wait", "30"], "market-order maximum 2000"),
    ],
)
def test_execq_signal_exits_1_with_the_reason_when_refused(worker, sim, args, says):
    result = execq("signal", *args)

    assert result.returncode == 1
    assert result.stderr.startswith("execq: refused: ") and says in result.stderr
    assert "Traceback" not in result.stderr
    assert len(events("signal_rejected")) == 1
