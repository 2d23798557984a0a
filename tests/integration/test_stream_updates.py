"""What the streams hand to the order lifecycle and the aged closes, through real workers,
Redis, Postgres and the simulator: a pushed fill is recorded and booked once, whoever saw
it first; an update for an order a run holds reaches that run, or is recorded as it lets
go; a reconnect catches up by REST; a pushed price claims an aged close exactly once.

Most tests hand the flows a stream's word themselves, taken from the simulator's ledger
(the exchange's own record of the order, which costs no request the counts below see);
the last ones run the real stream holder (``execq streams``, ``stream_holders``).
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select

from tests.conftest import book_size, cid_of, order_of, wait_for

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


def new_signal() -> str:
    return f"su-{uuid.uuid4().hex[:12]}"


def events_of(client_order_id: str | None = None, aged_id: int | None = None) -> list:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        query = select(Event).order_by(Event.id)
        if client_order_id is not None:
            query = query.where(Event.client_order_id == client_order_id)
        if aged_id is not None:
            query = query.where(Event.aged_id == aged_id)
        return list(session.scalars(query))


def unknown_alerts() -> list:
    from workers.store.db import session_scope
    from workers.store.models import Alert

    with session_scope() as session:
        return list(session.scalars(select(Alert).where(Alert.kind == "order_unknown")))


def settings():
    from workers.settings import get_settings

    return get_settings()


def limit(signal_id: str, exchange: str, symbol: str, side: str, amount: str, price: str):
    from workers.producer import submit_limit_order

    return submit_limit_order(signal_id, exchange, symbol, side, amount, price)


def market(signal_id: str, exchange: str, symbol: str, side: str, amount: str):
    from workers.producer import submit_market_order

    return submit_market_order(signal_id, exchange, symbol, side, amount)


def exchange_word(sim, client_order_id: str):
    """The order as the exchange has it now: what its stream pushes."""
    from workers.exchange.venues.base import ExchangeOrder

    rows = sim.orders_for(client_order_id)
    if not rows:
        return None
    row = rows[-1]
    return ExchangeOrder(
        id=str(row["orderId"]),
        client_order_id=client_order_id,
        symbol=row["symbol"],
        status=row["status"],
        amount=Decimal(row["amount"]),
        filled=Decimal(row["filled"]),
        average=None if row["average"] is None else Decimal(row["average"]),
        reduce_only=row["reduceOnly"],
        side=row["side"],
    )


def resting_order_filled_on_the_exchange(sim, exchange: str = "binance") -> str:
    """A GTC buy of 0.1 ETH that rested, then filled on the exchange while nobody looked."""
    sim.prices({"exchange": exchange, "symbol": ETH, "price": "3500"})
    signal_id = new_signal()
    assert limit(signal_id, exchange, ETH, "buy", "0.1", "3400").get(timeout=60)["status"] == "open"
    sim.prices({"exchange": exchange, "symbol": ETH, "price": "3390"})
    cid = cid_of(signal_id)
    wait_for(
        lambda: [row["status"] for row in sim.orders_for(cid)] == ["closed"],
        30,
        message="the order never filled on the exchange",
    )
    assert order_of(cid).status == "open"
    return cid


def fill_sources(client_order_id: str) -> list[str | None]:
    return [
        (event.payload or {}).get("source")
        for event in events_of(client_order_id)
        if event.type == "order_filled"
    ]


# --- order updates ---------------------------------------------------------------------------


def test_a_pushed_fill_is_recorded_from_the_stream_and_booked_once_when_a_poll_saw_it_too(
    worker, sim
):
    from workers.app import app
    from workers.flows.stream_updates import apply_order_update
    from workers.flows.submission import record_sighting
    from workers.flows.tracking import finish

    # Given a resting order that filled on the exchange, and a poll that read it as open
    cid = resting_order_filled_on_the_exchange(sim)
    read_by_the_poll = order_of(cid)
    seen = exchange_word(sim, cid)

    # When the stream pushes the fill
    outcome = apply_order_update("binance", seen, settings())

    # Then it is recorded at once, from the stream
    assert outcome == "recorded"
    assert order_of(cid).status == "filled"
    assert fill_sources(cid) == ["stream"]

    # When the poll records the same fill from its earlier read, and its finish asks for
    # verification again, and the stream pushes it once more
    record_sighting(read_by_the_poll, seen, "tracking", settings())
    finish(order_of(cid))
    app.send_task("verify_position", kwargs={"client_order_id": cid}).get(timeout=60)
    assert apply_order_update("binance", seen, settings()) == "unchanged"
    app.send_task("verify_position", kwargs={"client_order_id": cid}).get(timeout=60)

    # Then the order was filled once, and the book holds its fill once
    assert fill_sources(cid) == ["stream"]
    wait_for(lambda: order_of(cid).booked_filled == Decimal("0.1"), 30, message="not booked")
    assert book_size("binance", ETH) == Decimal("0.1")


def test_an_update_for_an_order_execq_does_not_have_is_left_to_recovery(worker, sim):
    from workers.exchange.venues.base import ExchangeOrder
    from workers.flows.stream_updates import apply_order_update

    # Given an update for a client id execq never used, and one of an order on another account
    stranger = ExchangeOrder(
        id="1",
        client_order_id="not-ours-1",
        symbol=ETH,
        status="closed",
        amount=Decimal("0.1"),
        filled=Decimal("0.1"),
        average=Decimal("3500"),
        reduce_only=False,
    )
    cid = resting_order_filled_on_the_exchange(sim)
    ours_elsewhere = exchange_word(sim, cid)

    # Then neither changes anything
    assert apply_order_update("binance", stranger, settings()) == "unknown_order"
    assert apply_order_update("bybit", ours_elsewhere, settings()) == "unknown_order"
    assert order_of(cid).status == "open"


def test_an_update_for_an_order_a_run_holds_goes_to_that_run_and_is_never_lost(worker, sim):
    from workers.flows.stream_updates import apply_order_update, wait_for_order_update
    from workers.flows.submission import Submission, order_lease

    cid = resting_order_filled_on_the_exchange(sim)
    seen = exchange_word(sim, cid)

    # Given a run holding the order's lease
    with order_lease(cid, settings(), time.monotonic() + 10):
        # When the stream pushes the fill, the run receives it
        assert apply_order_update("binance", seen, settings()) == "handed_to_run"
        assert wait_for_order_update(cid, 5) == seen
        assert order_of(cid).status == "open"

    # Given a run that reads nothing the stream hands over while it works
    with order_lease(cid, settings(), time.monotonic() + 10) as lease:
        assert apply_order_update("binance", seen, settings()) == "handed_to_run"
        # When it ends (a resting limit order: nothing for it to do)
        ended = Submission(
            order=order_of(cid), settings=settings(), deadline=time.monotonic() + 10, lease=lease
        ).run()
        # Then it recorded the fill before letting go
        assert ended.status == "filled"
    assert fill_sources(cid) == ["stream"]


def test_a_late_word_handed_to_the_run_that_ended_the_order_records_nothing_twice(worker, sim):
    from workers.flows.stream_updates import hand_to_run
    from workers.flows.submission import Submission, order_lease
    from workers.flows.verification import InlineSettlement

    # Given a Binance market order its run filled, verified and booked from the create's
    # answer, and the stream's word on the fill handed to that run late
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    signal_id = new_signal()
    assert market(signal_id, "binance", ETH, "buy", "0.1").get(timeout=60)["status"] == "filled"
    cid = cid_of(signal_id)
    wait_for(lambda: order_of(cid).booked_filled == Decimal("0.1"), 30, message="not booked")
    recorded = [e.type for e in events_of(cid)]

    # When a run of it (a redelivery) ends with the word in its list
    with order_lease(cid, settings(), time.monotonic() + 10) as lease:
        hand_to_run(cid, exchange_word(sim, cid))
        Submission(
            order=order_of(cid),
            settings=settings(),
            deadline=time.monotonic() + 10,
            lease=lease,
            on_terminal=InlineSettlement(),
        ).run()

    # Then nothing more was recorded: no second fill, verification or booking
    assert [e.type for e in events_of(cid)] == recorded
    assert book_size("binance", ETH) == Decimal("0.1")


def test_an_update_handed_over_as_a_run_lets_go_is_recorded_when_it_does(worker, sim):
    from workers.flows.stream_updates import apply_order_update
    from workers.flows.submission import order_lease

    cid = resting_order_filled_on_the_exchange(sim)

    # Given a run (a cancel, say) holding the lease that never looks at the stream's list
    with order_lease(cid, settings(), time.monotonic() + 10):
        assert apply_order_update("binance", exchange_word(sim, cid), settings()) == "handed_to_run"
        assert order_of(cid).status == "open"

    # Then the fill is recorded as it lets go, not at the next tracking sweep, and booked
    assert order_of(cid).status == "filled"
    assert fill_sources(cid) == ["stream"]
    wait_for(lambda: book_size("binance", ETH) == Decimal("0.1"), 30, message="not booked")


def test_a_reconnect_catches_up_with_a_fill_that_happened_while_no_stream_ran(worker, sim):
    from workers.exchange.positions import cached_position_size
    from workers.flows.stream_updates import reconcile_account

    # Given a resting order that filled while no stream listened
    cid = resting_order_filled_on_the_exchange(sim, "bybit")

    # When the stream reconnects and reconciles the account
    counts = reconcile_account("bybit", settings())

    # Then the fill is recorded (by REST), booked, and the position cache is fresh
    assert counts.get("orders_adopted") == 1
    assert counts.get("positions_read") == 1
    assert order_of(cid).status == "filled"
    assert fill_sources(cid) == ["tracking"]
    assert cached_position_size("bybit", ETH) == Decimal("0.1")
    wait_for(lambda: book_size("bybit", ETH) == Decimal("0.1"), 30, message="not booked")


def test_a_bybit_market_order_with_a_stale_stream_fetches_its_fill_as_without_streams(worker, sim):
    # Given no stream ever delivered for Bybit
    signal_id = new_signal()
    fetches_before = sim.calls("bybit", "fetch_order")

    # When a market order is sent
    summary = market(signal_id, "bybit", BTC, "buy", "0.01").get(timeout=60)

    # Then one fetch after the create told its fill
    assert summary["status"] == "filled"
    assert sim.calls("bybit", "fetch_order") == fetches_before + 1
    assert fill_sources(cid_of(signal_id)) == ["create+follow"]


# --- aged closes on pushed prices ------------------------------------------------------------


def aged_settings():
    """Positions age at once and stay in grace: the target is the breakeven price."""
    base = settings()
    aged = base.aged.model_copy(update={"max_age_s": 0.001, "grace_period_s": 3600})
    return base.model_copy(update={"aged": aged})


def aged_long(sim) -> tuple[int, Decimal]:
    """A 0.1 ETH long on Binance at 3500, aged, its price below the target; (episode, target)."""
    from workers.flows.aged_sweep import aged_targets, sweep_aged

    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    assert market(new_signal(), "binance", ETH, "buy", "0.1").get(timeout=60)["status"] == (
        "filled"
    )
    wait_for(lambda: book_size("binance", ETH) == Decimal("0.1"), 30, message="not booked")
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3400"})
    report = sweep_aged(aged_settings())
    assert report.detected == 1 and report.closes_enqueued == []
    (target,) = aged_targets()[("binance", ETH)]
    assert target.side == "long" and target.target_price > Decimal("3500")
    return target.aged_id, target.target_price


def episode(aged_id: int):
    from workers.store.aged import load_aged

    return load_aged(aged_id)


def payloads(aged_id: int, event_type: str) -> list[dict]:
    return [e.payload for e in events_of(aged_id=aged_id) if e.type == event_type]


def test_a_pushed_price_past_the_target_claims_the_close_and_the_close_reaches_the_exchange(
    worker, sim
):
    from workers.flows.aged_sweep import close_on_pushed_price

    # Given an aged long whose target is above the market
    aged_id, target = aged_long(sim)

    # When a stream pushes a price short of the target, nothing happens
    assert (
        close_on_pushed_price("binance", ETH, target - 1, datetime.now(UTC), aged_settings()) == []
    )
    assert payloads(aged_id, "aged_close_claimed") == []

    # When it pushes one at the target
    sim.prices({"exchange": "binance", "symbol": ETH, "price": str(target + 1)})
    pushed_at = datetime.now(UTC)
    claimed = close_on_pushed_price("binance", ETH, target + 1, pushed_at, aged_settings())

    # Then the close is claimed, recorded as the stream's, and the position closes
    assert claimed == [aged_id]
    (reached,) = payloads(aged_id, "aged_target_reached")
    assert reached["trigger"] == "stream"
    assert reached["observed_at"] == pushed_at.isoformat()
    (claim,) = payloads(aged_id, "aged_close_claimed")
    assert claim["trigger"] == "stream"
    wait_for(lambda: episode(aged_id).status == "closed", 60, message="the close never landed")
    closes = [row for row in sim.ledger() if row["symbol"] == ETH and row["side"] == "sell"]
    assert [row["status"] for row in closes] == ["closed"]


def test_the_sweep_still_claims_a_close_on_its_own_tickers_and_says_so(worker, sim):
    from workers.flows.aged_sweep import sweep_aged

    # Given an aged long, and no stream: the market moves past its target
    aged_id, target = aged_long(sim)
    sim.prices({"exchange": "binance", "symbol": ETH, "price": str(target + 1)})

    # When the sweep runs, it reads the tickers and claims the close as the safety net
    assert sweep_aged(aged_settings()).closes_enqueued == [aged_id]
    assert [p["trigger"] for p in payloads(aged_id, "aged_target_reached")] == ["sweep"]
    assert [p["trigger"] for p in payloads(aged_id, "aged_close_claimed")] == ["sweep"]


def test_a_sweep_and_a_pushed_price_racing_for_one_close_claim_it_once(worker, sim):
    from workers.app import app
    from workers.flows.aged_sweep import close_on_pushed_price, sweep_aged

    # Given an aged long, and the market moves past its target
    aged_id, target = aged_long(sim)
    price = target + 1
    sim.prices({"exchange": "binance", "symbol": ETH, "price": str(price)})

    # When the sweep and a pushed price see it at the same moment
    start = threading.Barrier(2)
    claims: dict[str, list[int]] = {}

    def sweep() -> None:
        start.wait()
        claims["sweep"] = sweep_aged(aged_settings()).closes_enqueued

    def pushed() -> None:
        start.wait()
        claims["stream"] = close_on_pushed_price(
            "binance", ETH, price, datetime.now(UTC), aged_settings()
        )

    racers = [threading.Thread(target=sweep), threading.Thread(target=pushed)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)

    # Then exactly one of them claimed the close, and the exchange got one close order
    assert sorted(claims["sweep"] + claims["stream"]) == [aged_id]
    (claim,) = payloads(aged_id, "aged_close_claimed")
    winner = "sweep" if claims["sweep"] else "stream"
    assert claim["trigger"] == winner
    for aged in claims["sweep"]:
        app.send_task("close_aged_position", kwargs={"aged_id": aged})
    wait_for(lambda: episode(aged_id).status == "closed", 60, message="the close never landed")
    closes = [row for row in sim.ledger() if row["symbol"] == ETH and row["side"] == "sell"]
    assert len(closes) == 1


def test_a_crossing_two_writers_saw_from_the_same_episode_is_recorded_once(worker, sim):
    from workers.store.aged import load_aged, write_episode
    from workers.store.db import session_scope

    # Given an aged long, read by two writers before either recorded the crossing
    aged_id, target = aged_long(sim)
    seen_by_sweep, seen_by_stream = load_aged(aged_id), load_aged(aged_id)

    # When both record the first price past the target
    def record(view, trigger: str) -> bool:
        with session_scope() as session:
            return write_episode(
                session,
                view,
                event="aged_target_reached",
                payload={"price": str(target + 1), "trigger": trigger},
                target_reached_at=datetime.now(UTC),
                unset="target_reached_at",
            )

    # Then only the first is written: one crossing, one event
    assert record(seen_by_sweep, "sweep") is True
    assert record(seen_by_stream, "stream") is False
    assert [p["trigger"] for p in payloads(aged_id, "aged_target_reached")] == ["sweep"]


# --- verification ----------------------------------------------------------------------------


def stream_delivers(account: str, stream: str) -> None:
    """``stream`` of ``account`` just delivered (what its holder writes on every message)."""
    from workers import redis_keys
    from workers.redis_client import get_redis

    get_redis().hset(
        redis_keys.STREAMS_LAST_ALIVE, redis_keys.stream_field(account, stream), time.time()
    )


def test_verification_takes_a_fill_the_healthy_orders_stream_recorded_without_a_lookup(worker, sim):
    from workers.execution.verification import SourceName, Verdict
    from workers.flows.stream_updates import apply_order_update
    from workers.flows.verification import verify_order
    from workers.streams.health import ORDERS

    # Given a verification that read the order while it was open, and a healthy orders
    # stream that has recorded its fill since
    cid = resting_order_filled_on_the_exchange(sim)
    read_as_open = order_of(cid)
    stream_delivers("binance", ORDERS)
    assert apply_order_update("binance", exchange_word(sim, cid), settings()) == "recorded"
    lookups = sim.calls("binance", "fetch_order")

    # When it verifies the order
    verification = verify_order(read_as_open, settings())

    # Then the stream's record decides, and the exchange was not asked
    assert verification.result.verdict == Verdict.VERIFIED
    assert verification.result.decided_by == SourceName.ORDER
    assert verification.result.actual_size == Decimal("0.1")
    assert sim.calls("binance", "fetch_order") == lookups


def test_verification_with_a_stale_orders_stream_looks_the_order_up_as_without_streams(worker, sim):
    from workers.execution.verification import Verdict
    from workers.flows.verification import verify_order

    # Given an order that filled on the exchange, recorded open, and no stream
    cid = resting_order_filled_on_the_exchange(sim)
    lookups = sim.calls("binance", "fetch_order")

    # When it is verified, the exchange is asked, and says filled
    verification = verify_order(order_of(cid), settings())
    assert verification.result.verdict == Verdict.VERIFIED
    assert sim.calls("binance", "fetch_order") == lookups + 1


def test_a_flat_position_cache_from_a_healthy_stream_never_stops_rest_from_verifying(worker, sim):
    from workers.exchange.positions import ExchangePosition, cache_positions
    from workers.execution.verification import SourceName, Verdict
    from workers.flows.verification import verify_order
    from workers.streams.health import ORDERS, POSITIONS

    # Given an order still working on the exchange, and a position the stream's cache
    # missed (it shows flat) while the exchange holds 0.1
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    signal_id = new_signal()
    assert limit(signal_id, "binance", ETH, "buy", "0.1", "3000").get(timeout=60)["status"] == (
        "open"
    )
    sim.set_position("binance", ETH, "0.1", "3500")
    cache_positions([ExchangePosition("binance", ETH, Decimal(0), None, None)])
    stream_delivers("binance", ORDERS)
    stream_delivers("binance", POSITIONS)

    # When it is verified
    verification = verify_order(order_of(cid_of(signal_id)), settings())

    # Then REST positions verified it: the cache's silence is never a "no"
    assert verification.result.verdict == Verdict.VERIFIED
    assert verification.result.decided_by == SourceName.REST


def test_a_position_the_healthy_stream_cached_verifies_without_a_positions_request(worker, sim):
    from workers.exchange.positions import ExchangePosition, cache_positions
    from workers.execution.verification import SourceName, Verdict
    from workers.flows.verification import verify_order
    from workers.streams.health import POSITIONS

    # Given an order still working on the exchange, and the positions stream has cached
    # the position it opened
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    signal_id = new_signal()
    assert limit(signal_id, "binance", ETH, "buy", "0.1", "3000").get(timeout=60)["status"] == (
        "open"
    )
    cache_positions([ExchangePosition("binance", ETH, Decimal("0.1"), Decimal("3500"), None)])
    stream_delivers("binance", POSITIONS)
    reads = sim.calls("binance", "positions")

    # When it is verified
    verification = verify_order(order_of(cid_of(signal_id)), settings())

    # Then the cache verified it, with no positions request
    assert verification.result.verdict == Verdict.VERIFIED
    assert verification.result.decided_by == SourceName.CACHE
    assert sim.calls("binance", "positions") == reads


# --- with the real stream holder -------------------------------------------------------------


def test_with_the_holder_a_bybit_market_order_costs_no_request_beyond_its_create(
    worker, stream_holders, sim
):
    # Given the stream holder with Bybit's orders stream live
    stream_holders.start(accounts=("bybit",))
    creates, fetches = sim.calls("bybit", "create_order"), sim.calls("bybit", "fetch_order")
    signal_id = new_signal()

    # When a market order is sent (Bybit's create answers with ids only)
    summary = market(signal_id, "bybit", BTC, "buy", "0.01").get(timeout=60)

    # Then its fill came from the stream: the create was the only order request
    assert summary["status"] == "filled"
    assert sim.calls("bybit", "create_order") == creates + 1
    assert sim.calls("bybit", "fetch_order") == fetches
    assert fill_sources(cid_of(signal_id)) == ["stream"]
    wait_for(lambda: book_size("bybit", BTC) == Decimal("0.01"), 30, message="not booked")


def test_with_the_holder_an_open_whose_answer_was_lost_is_settled_by_the_stream(
    worker, stream_holders, sim
):
    # Given the stream holder, and Binance accepts the next create but its answer is lost
    # and the order stays hidden from every lookup for 12 s (past the visibility window)
    stream_holders.start(accounts=("binance",))
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "binance",
                    "operation": "create_order",
                    "kind": "timeout_after_accept",
                    "count": 1,
                },
                {"exchange": "binance", "kind": "visibility_lag", "lag_ms": 12_000},
            ]
        }
    )
    signal_id = new_signal()

    # When the order is sent
    summary = market(signal_id, "binance", BTC, "buy", "0.01").get(timeout=60)

    # Then the stream's word settles it at once: filled, sent once, nobody alerted
    cid = cid_of(signal_id)
    assert summary["status"] == "filled"
    assert len(sim.orders_for(cid)) == 1
    assert fill_sources(cid) == ["stream"]
    assert unknown_alerts() == []
    wait_for(lambda: book_size("binance", BTC) == Decimal("0.01"), 30, message="not booked")


def test_with_the_holder_a_pushed_price_at_the_target_closes_an_aged_position(
    worker, stream_holders, sim
):
    from workers.streams.health import PRICES, stream_healthy

    # Given the stream holder, and an aged long whose target is above the market (no
    # sweep runs: only the price stream can close it)
    stream_holders.start(accounts=("binance",))
    aged_id, target = aged_long(sim)
    wait_for(
        lambda: stream_healthy("binance", PRICES, settings()),
        30,
        message="the price stream never watched the aged symbol",
    )

    # When the exchange's price reaches the target
    sim.prices({"exchange": "binance", "symbol": ETH, "price": str(target + 1)})

    # Then the close is claimed on the pushed price and the position closes
    wait_for(lambda: episode(aged_id).status == "closed", 60, message="the close never landed")
    (claim,) = payloads(aged_id, "aged_close_claimed")
    assert claim["trigger"] == "stream"
    assert [p["trigger"] for p in payloads(aged_id, "aged_target_reached")] == ["stream"]
