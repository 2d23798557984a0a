"""The stream holder (``execq streams``) with the real ccxt.pro classes against the simulator's
streams, real Postgres, Redis and Celery workers.

Each test starts holders through the run's ``Stack`` (``stream_holders``) with short
windows (``STREAMS_TEST_ENV``: stale after 3 s, lease 3 s) and waits on what an
operator or a consumer would see: ``STREAMS_STATE`` rows, the orders table and its
events, the position and price caches, alerts, reconnect counts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from decimal import Decimal
from typing import Any

import pytest
import requests
from sqlalchemy import select

from tests.conftest import ROOT, cid_of, wait_for

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
# Seconds: a reconnect, a reconcile, a takeover on a busy machine; every wait returns as
# soon as the state is there.
WAIT_S = 30


def stream_state(account: str, stream: str) -> dict[str, Any] | None:
    from workers import redis_keys
    from workers.redis_client import get_redis

    raw = get_redis().hget(redis_keys.STREAMS_STATE, redis_keys.stream_field(account, stream))
    return None if raw is None else json.loads(raw)


def is_live(account: str, stream: str, holder_pid: int | None = None) -> bool:
    state = stream_state(account, stream)
    if state is None or state["state"] != "live":
        return False
    return holder_pid is None or state["holder"].endswith(f":{holder_pid}")


def reconnects(account: str, stream: str) -> int:
    from workers import redis_keys
    from workers.redis_client import get_redis

    field = redis_keys.stream_field(account, stream)
    return int(get_redis().hget(redis_keys.STREAMS_RECONNECTS, field) or 0)


def reconnect_metric(account: str, stream: str) -> float | None:
    """``execq_stream_reconnects_total{account, stream}`` as a worker's endpoint serves it."""
    from workers.observability.cluster import ClusterStateCollector

    for metric in ClusterStateCollector(fresh_s=0).collect():
        for sample in metric.samples:
            if sample.name == "execq_stream_reconnects_total" and sample.labels == {
                "account": account,
                "stream": stream,
            }:
                return sample.value
    return None


def sim_streams() -> dict[str, Any]:
    import os

    response = requests.get(f"{os.environ['EXECQ_SIM_URL']}/_sim/streams", timeout=10)
    response.raise_for_status()
    return response.json()


def order_status(client_order_id: str) -> str | None:
    from workers.store.orders import load_order

    order = load_order(client_order_id)
    return None if order is None else order.status


def transition_sources(client_order_id: str) -> list[str]:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        events = session.scalars(
            select(Event).where(Event.client_order_id == client_order_id).order_by(Event.id)
        ).all()
        return [e.payload["source"] for e in events if "source" in (e.payload or {})]


def stale_alerts(account: str) -> list[Any]:
    from workers.store.db import session_scope
    from workers.store.models import Alert

    with session_scope() as session:
        return list(
            session.scalars(
                select(Alert).where(Alert.kind == "stream_stale", Alert.account == account)
            )
        )


def resting_buy(exchange: str, symbol: str, amount: str, price: str) -> str:
    """A GTC buy placed through a worker and resting on the exchange; its client order id."""
    from workers.producer import submit_limit_order

    signal_id = f"st-{uuid.uuid4().hex[:12]}"
    accepted = submit_limit_order(signal_id, exchange, symbol, "buy", amount, price).get(timeout=60)
    assert accepted["status"] == "open", accepted
    return cid_of(signal_id)


def cached_size(account: str, symbol: str) -> Decimal | None:
    from workers.exchange.positions import cached_position_size

    return cached_position_size(account, symbol)


def cached_price(account: str, symbol: str) -> Decimal | None:
    from workers import redis_keys
    from workers.redis_client import get_redis

    raw = get_redis().get(redis_keys.price_cache(account, symbol))
    return None if raw is None else Decimal(raw)


# --- start and status -------------------------------------------------------------------


def test_the_holder_shows_each_stream_live_and_okx_as_unsupported(stream_holders):
    # When a holder starts
    holder = stream_holders.start()

    # Then the private streams of Binance and Bybit are live under its id, their price
    # streams idle (nothing held, nothing to watch), and OKX is polled as before
    for account in ("binance", "bybit"):
        assert is_live(account, "orders", holder.pid)
        assert is_live(account, "positions", holder.pid)
        wait_for(
            lambda a=account: (stream_state(a, "prices") or {}).get("state") == "idle",
            WAIT_S,
            message=f"{account} prices not idle",
        )
    assert {stream_state("okx", s)["state"] for s in ("orders", "positions", "prices")} == {
        "unsupported"
    }
    # And `execq status` shows each stream's state and age
    shown = subprocess.run(
        [sys.executable, "-m", "workers.cli", "status", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    rows = {(r["account"], r["stream"]): r for r in json.loads(shown.stdout)["streams"]}
    assert rows[("binance", "orders")]["state"] == "live"
    assert rows[("binance", "orders")]["age_s"] is not None
    assert rows[("okx", "prices")]["state"] == "unsupported"
    table = subprocess.run(
        [sys.executable, "-m", "workers.cli", "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert table.returncode == 0, table.stderr
    assert "streams (9)" in table.stdout


def test_the_holders_rest_calls_draw_from_the_accounts_shared_budget(stream_holders):
    from workers import redis_keys
    from workers.redis_client import get_redis

    # Given no request drew from any account's budget yet
    redis = get_redis()
    buckets = {account: redis_keys.rate_limit_bucket(account) for account in ("binance", "bybit")}
    assert not any(redis.exists(key) for key in buckets.values())

    # When a holder connects (markets, Binance's listen key, the positions snapshot by REST)
    stream_holders.start()

    # Then those requests drew from each account's budget, shared with the workers
    assert all(redis.exists(key) for key in buckets.values())


def test_quiet_private_streams_stay_live_on_their_pongs(stream_holders):
    from datetime import UTC, datetime

    from tests.conftest import STREAMS_TEST_ENV
    from workers.streams.health import stream_age_s

    stale_after_s = float(STREAMS_TEST_ENV["EXECQ_STREAMS__STALE_AFTER_S"])

    # Given a holder, and accounts that do not trade: their user streams push nothing
    stream_holders.start()

    def live_for_s(account: str, stream: str) -> float:
        state = stream_state(account, stream)
        if state is None or state["state"] != "live":
            return 0.0
        return (datetime.now(UTC) - datetime.fromisoformat(state["since"])).total_seconds()

    # Then each stays live past twice the stale window, the one spell it could have had
    # (a stale verdict would end the spell of "live" and start it again)
    for account in ("binance", "bybit"):
        for stream in ("orders", "positions"):
            wait_for(
                lambda a=account, s=stream: live_for_s(a, s) > 2 * stale_after_s,
                WAIT_S,
                message=f"{account} {stream} did not stay live",
            )
            # And consumers see it healthy: its age stays inside the window
            age_s = stream_age_s(account, stream)
            assert age_s is not None and age_s <= stale_after_s
    assert reconnects("bybit", "orders") == reconnects("binance", "orders") == 0
    assert stale_alerts("bybit") == stale_alerts("binance") == []


# --- what the streams carry ---------------------------------------------------------------


@pytest.mark.parametrize("exchange", ["binance", "bybit"])
def test_a_fill_pushed_by_the_stream_is_recorded_and_fills_the_caches(
    exchange, worker, stream_holders, sim
):
    # Given a holder, and a buy resting below the market (no sweep runs: only the
    # stream can tell execq about its fill)
    stream_holders.start()
    sim.prices({"exchange": exchange, "symbol": ETH, "price": "3500"})
    cid = resting_buy(exchange, ETH, "0.1", "3400")

    # When the price crosses it on the exchange
    sim.prices({"exchange": exchange, "symbol": ETH, "price": "3390"})

    # Then the fill is recorded from the stream
    wait_for(lambda: order_status(cid) == "filled", WAIT_S, message="fill not recorded")
    assert "stream" in transition_sources(cid)
    # And the position stream wrote the position cache
    wait_for(
        lambda: cached_size(exchange, ETH) == Decimal("0.1"),
        WAIT_S,
        message="position cache not written by the stream",
    )
    # And with a position held, its price is watched and cached as it moves
    wait_for(lambda: is_live(exchange, "prices"), WAIT_S, message="price stream not live")
    sim.prices({"exchange": exchange, "symbol": ETH, "price": "3456.78"})
    wait_for(
        lambda: cached_price(exchange, ETH) == Decimal("3456.78"),
        WAIT_S,
        message="pushed price not cached",
    )


@pytest.mark.parametrize("exchange", ["binance", "bybit"])
def test_positions_pushed_by_the_stream_reach_the_position_cache(exchange, stream_holders, sim):
    # Given a holder (no worker: only the stream writes the cache here)
    stream_holders.start()

    # When a position opens and changes outside execq
    sim.set_position(exchange, BTC, "0.02", "65000")
    wait_for(lambda: cached_size(exchange, BTC) == Decimal("0.02"), WAIT_S, message="not cached")
    sim.set_position(exchange, BTC, "-0.01", "65000")

    # Then the cache follows it, short and flat included
    wait_for(lambda: cached_size(exchange, BTC) == Decimal("-0.01"), WAIT_S, message="no short")
    sim.set_position(exchange, BTC, "0")
    wait_for(lambda: cached_size(exchange, BTC) == Decimal(0), WAIT_S, message="not flat")


# Positions age at once and stay in grace: an aged long's target is its breakeven price.
AGED_ENV = {"EXECQ_AGED__MAX_AGE_S": "0.001", "EXECQ_AGED__GRACE_PERIOD_S": "3600"}


def aged_events(aged_id: int, event_type: str) -> list[dict]:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        return [
            e.payload
            for e in session.scalars(
                select(Event).where(Event.aged_id == aged_id, Event.type == event_type)
            )
        ]


def aged_status(aged_id: int) -> str:
    from workers.store.aged import load_aged

    return load_aged(aged_id).status


def test_a_pushed_price_at_an_aged_target_closes_the_position(worker, stream_holders, sim):
    from workers.flows.aged_sweep import aged_targets, sweep_aged
    from workers.producer import submit_market_order
    from workers.settings import get_settings

    # Given a holder, and an aged 0.1 ETH long on Binance below its target (the sweep
    # detected it once; no sweep runs after that)
    stream_holders.start(env=AGED_ENV)
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    signal_id = f"st-{uuid.uuid4().hex[:12]}"
    assert submit_market_order(signal_id, "binance", ETH, "buy", "0.1").get(timeout=60)[
        "status"
    ] == ("filled")
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3400"})
    base = get_settings()
    aged = base.aged.model_copy(update={"max_age_s": 0.001, "grace_period_s": 3600})
    wait_for(
        lambda: sweep_aged(base.model_copy(update={"aged": aged})).detected,
        WAIT_S,
        message="not aged",
    )
    ((target,),) = [t for (account, symbol), t in aged_targets().items() if symbol == ETH]
    wait_for(lambda: is_live("binance", "prices"), WAIT_S, message="price stream not live")

    # When the exchange's price moves past the target
    sim.prices({"exchange": "binance", "symbol": ETH, "price": str(target.target_price + 1)})

    # Then the pushed price claims the close, and the position closes on the exchange
    wait_for(
        lambda: aged_events(target.aged_id, "aged_close_claimed"),
        WAIT_S,
        message="no close claimed",
    )
    (claim,) = aged_events(target.aged_id, "aged_close_claimed")
    assert claim["trigger"] == "stream"
    wait_for(lambda: aged_status(target.aged_id) == "closed", 60, message="not closed")


# --- faults -------------------------------------------------------------------------------


def test_a_disconnect_is_counted_and_a_fill_during_the_gap_is_recorded(worker, stream_holders, sim):
    # Given a holder and a resting buy
    stream_holders.start()
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3500"})
    cid = resting_buy("binance", ETH, "0.1", "3400")
    before = reconnects("binance", "orders")
    markets_read = sim.calls("binance", "markets")
    assert markets_read > 0, "the holder loaded the markets"

    # When the private stream is cut instead of delivering the fill
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "binance",
                    "operation": "private_stream",
                    "kind": "stream_disconnect",
                    "count": 1,
                }
            ]
        }
    )
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3390"})

    # Then the holder reconnects, counts it, and the reconciliation after the reconnect
    # records the fill the stream never delivered
    wait_for(lambda: sim.fired().get("stream_disconnect"), WAIT_S, message="fault not fired")
    wait_for(lambda: order_status(cid) == "filled", WAIT_S, message="gap not reconciled")
    wait_for(lambda: reconnects("binance", "orders") > before, WAIT_S, message="not counted")
    wait_for(lambda: is_live("binance", "orders"), WAIT_S, message="not live again")
    # And the metrics show the count
    assert reconnect_metric("binance", "orders") == reconnects("binance", "orders")
    # And the new client started from the markets the first one loaded
    assert sim.calls("binance", "markets") == markets_read


def test_a_stalled_stream_turns_stale_with_one_alert_and_recovers(stream_holders, sim):
    # Given a holder with live streams
    stream_holders.start()
    before = reconnects("bybit", "positions")

    # When Bybit's private socket goes silent at its next message (no data, no pongs)
    sim.faults(
        {
            "rules": [
                {
                    "exchange": "bybit",
                    "operation": "private_stream",
                    "kind": "stream_stall",
                    "count": 1,
                }
            ]
        }
    )
    sim.set_position("bybit", BTC, "0.01", "65000")

    # Then the holder calls it stale, raises one warning, reconnects and is live again
    alert = wait_for(lambda: stale_alerts("bybit"), WAIT_S, message="no stream_stale alert")
    assert alert[0].severity == "warning"
    wait_for(lambda: reconnects("bybit", "positions") > before, WAIT_S, message="no reconnect")
    wait_for(lambda: is_live("bybit", "positions"), WAIT_S, message="not live again")
    assert len(stale_alerts("bybit")) == 1
    # And the position the stalled socket never delivered is in the cache (reconciliation)
    wait_for(
        lambda: cached_size("bybit", BTC) == Decimal("0.01"),
        WAIT_S,
        message="position not refreshed",
    )


def test_an_expired_listen_key_is_replaced_and_the_stream_delivers_again(stream_holders, sim):
    # Given a holder on Binance's user data stream
    stream_holders.start()
    old_key = sim_streams()["listenKeys"]["binance"]["listenKey"]
    before = reconnects("binance", "orders")

    # When the listen key expires at the next private message
    sim.faults({"rules": [{"kind": "listen_key_expired", "count": 1}]})
    sim.set_position("binance", BTC, "0.01", "65000")

    # Then the holder reconnects on a new key
    wait_for(lambda: reconnects("binance", "orders") > before, WAIT_S, message="no reconnect")
    wait_for(lambda: is_live("binance", "orders"), WAIT_S, message="not live again")
    assert sim_streams()["listenKeys"]["binance"]["listenKey"] != old_key
    # And the stream on it delivers: a position change reaches the cache
    sim.set_position("binance", BTC, "0.03", "65000")
    wait_for(
        lambda: cached_size("binance", BTC) == Decimal("0.03"),
        WAIT_S,
        message="no position after the new key",
    )


# --- one holder per account ---------------------------------------------------------------


def test_a_standby_takes_over_when_the_holder_dies(stream_holders):
    # Given a holder, and a second process standing by
    first = stream_holders.start()
    second = stream_holders.start(standby=True)
    assert is_live("binance", "orders", first.pid)

    # When the holder is killed
    first.kill(signal.SIGKILL)

    # Then the standby takes every account over once the lease expires
    for account in ("binance", "bybit"):
        for stream in ("orders", "positions"):
            wait_for(
                lambda a=account, s=stream: is_live(a, s, second.pid),
                WAIT_S,
                message=f"{account} {stream} not taken over",
            )
    assert second.alive


def test_a_holder_stopped_on_purpose_exits_cleanly_and_the_standby_takes_over(stream_holders):
    # Given a holder of Binance only, and a standby for it
    first = stream_holders.start(accounts=("binance",))
    second = stream_holders.start(standby=True, accounts=("binance",))
    assert stream_state("bybit", "orders") is None, "bybit is not this holder's"

    # When the holder gets SIGTERM
    assert first.stop() == 0

    # Then the standby holds Binance's streams
    for stream in ("orders", "positions"):
        wait_for(
            lambda s=stream: is_live("binance", s, second.pid),
            WAIT_S,
            message=f"binance {stream} not taken over",
        )


def test_the_holders_renewal_extends_binances_listen_key(sim):
    import asyncio
    import time

    from tests.sim.stream_clients import eventually
    from workers.settings import get_settings
    from workers.streams.clients import build_stream_client, close_stream_client, stream_venue

    async def scenario() -> None:
        # Given the holder's Binance client watching its user data stream
        settings = get_settings()
        account = settings.account("binance")
        venue = stream_venue(account)
        assert venue is not None and venue.renew_every_s == 20 * 60
        client = build_stream_client(account, settings)
        pending = None
        try:
            await client.load_markets()
            pending = asyncio.ensure_future(client.watch_orders())
            key = await eventually(lambda: sim_streams()["listenKeys"]["binance"])
            # (the client keeps the key once the exchange's answer reached it)
            await eventually(
                lambda: (client.options.get("linear") or {}).get("listenKey") == key["listenKey"]
            )
            keep_alives = sim.calls("binance", "listen_key")
            # When the holder renews it (every 20 minutes)
            renewed_from_ms = time.time() * 1000
            await venue.renew(client)
            # Then the exchange was asked once, and the same key lives 60 minutes from then
            assert sim.calls("binance", "listen_key") == keep_alives + 1
            renewed = sim_streams()["listenKeys"]["binance"]
            assert renewed["listenKey"] == key["listenKey"]
            assert renewed["expiresTime"] >= renewed_from_ms + 3600 * 1000 - 1
        finally:
            if pending is not None:
                pending.cancel()
            await close_stream_client(client)

    asyncio.run(scenario())


def test_a_holder_that_loses_its_lease_closes_the_accounts_streams_at_once(stream_holders):
    from workers import redis_keys
    from workers.redis_client import get_redis

    # Given a holder of Binance's streams
    holder = stream_holders.start(accounts=("binance",))
    assert [c for c in sim_streams()["connections"] if c["exchange"] == "binance"]

    # When another process holds the account's lease (as after a pause longer than its
    # lifetime), for a while
    get_redis().set(redis_keys.stream_lease("binance"), "another-holder", px=6000)

    # Then the holder closes the account's sockets at its next renewal
    wait_for(
        lambda: not [c for c in sim_streams()["connections"] if c["exchange"] == "binance"],
        WAIT_S,
        message="streams still open without the lease",
    )
    # And no longer shows the account's streams as its own
    wait_for(lambda: stream_state("binance", "orders") is None, WAIT_S, message="still shown")
    # And it takes the account up again once the other lease is gone
    for stream in ("orders", "positions"):
        wait_for(
            lambda s=stream: is_live("binance", s, holder.pid),
            WAIT_S,
            message=f"binance {stream} not taken up again",
        )
