"""Stream faults through the real ccxt.pro clients: disconnect, stall, drop, delay and an
expired Binance listen key, each as a user of ccxt would meet it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import aiohttp
import ccxt
import pytest
import requests

from exchange_sim.faults import parse_plan
from exchange_sim.streams.binance import StreamName
from tests.sim.conftest import StreamSimulator
from tests.sim.stream_clients import (
    BTC,
    ETH,
    WATCH_TIMEOUT_S,
    close_client,
    eventually,
    find,
    pro_client,
    watch_until,
)

EXCHANGES = ["binance", "bybit"]


def private_subscription(exchange: str) -> str:
    return "listenKey" if exchange == "binance" else "order"


def fetch_params(exchange: str) -> dict:
    return {"acknowledged": True} if exchange == "bybit" else {}


async def watching_orders(client, stream_sim: StreamSimulator, exchange: str) -> asyncio.Future:
    """A pending watch_orders whose private stream the simulator has connected."""
    pending = asyncio.ensure_future(client.watch_orders())
    await eventually(lambda: stream_sim.subscribed(exchange, private_subscription(exchange)))
    return pending


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_disconnect_surfaces_as_network_error_and_watching_again_reconnects(
    exchange: str, stream_sim: StreamSimulator
):
    async def scenario() -> None:
        client = await pro_client(exchange, stream_sim.base_url, stream_sim.ws_url)
        try:
            # Given a client watching its orders, and a plan that cuts the private stream once
            pending = await watching_orders(client, stream_sim, exchange)
            stream_sim.faults(
                {"rules": [{"kind": "stream_disconnect", "exchange": exchange, "count": 1}]}
            )
            # When an order fills
            lost = await client.create_order(BTC, "market", "buy", 0.005)
            # Then the watch fails with ccxt's NetworkError, and the stream never showed it
            with pytest.raises(ccxt.NetworkError):
                await asyncio.wait_for(pending, WATCH_TIMEOUT_S)
            assert find(client.orders, id=lost["id"]) is None
            rest = await client.fetch_order(lost["id"], BTC, fetch_params(exchange))
            assert rest["status"] == "closed"
            counts = stream_sim.message_counts(exchange, "private_stream")
            assert counts["stream_disconnect"] == 1
            # And watching again reconnects: the next order arrives
            again = await watching_orders(client, stream_sim, exchange)
            seen = await client.create_order(BTC, "market", "buy", 0.005)
            await watch_until(
                lambda: client.watch_orders(),
                lambda: find(client.orders, id=seen["id"], status="closed"),
                pending=again,
            )
        finally:
            await close_client(client)

    asyncio.run(scenario())


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_stalled_stream_stays_connected_and_silent(exchange: str, stream_sim: StreamSimulator):
    async def scenario() -> None:
        client = await pro_client(exchange, stream_sim.base_url, stream_sim.ws_url)
        fresh = None
        try:
            # Given a client receiving BTC's ticker
            await watch_until(lambda: client.watch_ticker(BTC), lambda: client.tickers.get(BTC))
            # When the public stream stalls at its next message, and the price moves twice
            stream_sim.faults(
                {
                    "rules": [
                        {
                            "kind": "stream_stall",
                            "exchange": exchange,
                            "operation": "public_stream",
                            "count": 1,
                        }
                    ]
                }
            )
            stream_sim.prices({"symbol": BTC, "price": "64000"})
            await eventually(lambda: any(c["stalled"] for c in stream_sim.connections(exchange)))
            stream_sim.prices({"symbol": BTC, "price": "63000"})
            # Then the connection stays open, and nothing more arrives on it
            [connection] = stream_sim.connections(exchange, "public_stream")
            assert connection["stalled"] is True
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.watch_ticker(BTC), 2.0)
            assert client.tickers[BTC]["last"] == 65000
            assert stream_sim.connections(exchange, "public_stream") != []
            # And a new connection gets the current price
            fresh = await pro_client(exchange, stream_sim.base_url, stream_sim.ws_url)
            ticker = await watch_until(
                lambda: fresh.watch_ticker(BTC), lambda: fresh.tickers.get(BTC)
            )
            assert ticker["last"] == 63000
        finally:
            await close_client(client)
            if fresh is not None:
                await close_client(fresh)

    asyncio.run(scenario())


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_dropped_messages_are_lost_while_the_stream_goes_on(
    exchange: str, stream_sim: StreamSimulator
):
    async def scenario() -> None:
        client = await pro_client(exchange, stream_sim.base_url, stream_sim.ws_url)
        try:
            # Given a plan that drops every private message about ETH
            stream_sim.faults(
                {
                    "rules": [
                        {
                            "kind": "stream_drop",
                            "exchange": exchange,
                            "operation": "private_stream",
                            "symbol": ETH,
                        }
                    ]
                }
            )
            pending = await watching_orders(client, stream_sim, exchange)
            # When an ETH order and then a BTC order fill
            eth = await client.create_order(ETH, "market", "buy", 0.01)
            btc = await client.create_order(BTC, "market", "buy", 0.005)
            # Then the BTC order arrives, the ETH order never does, though REST has it
            await watch_until(
                lambda: client.watch_orders(),
                lambda: find(client.orders, id=btc["id"], status="closed"),
                pending=pending,
            )
            assert find(client.orders, id=eth["id"]) is None
            rest = await client.fetch_order(eth["id"], ETH, fetch_params(exchange))
            assert rest["status"] == "closed"
            assert stream_sim.message_counts(exchange, "private_stream")["stream_drop"] >= 1
        finally:
            await close_client(client)

    asyncio.run(scenario())


def test_a_drop_probability_loses_that_fraction_of_messages(stream_sim: StreamSimulator):
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{stream_sim.ws_url}/bybit/v5/public/linear")
            await ws.send_json({"op": "subscribe", "req_id": "1", "args": ["tickers.BTCUSDT"]})
            assert (await ws.receive_json(timeout=WATCH_TIMEOUT_S))["success"] is True
            assert (await ws.receive_json(timeout=WATCH_TIMEOUT_S))["type"] == "snapshot"
            # Given half of the public messages are lost (seeded)
            stream_sim.faults(
                {
                    "seed": 3,
                    "rules": [
                        {"kind": "stream_drop", "operation": "public_stream", "probability": 0.5}
                    ],
                }
            )
            # When BTC takes 60 random steps, then one last known price
            stream_sim.prices({"symbol": BTC, "walk": {"steps": 60, "volatility": 0.001}})
            stream_sim.faults({})
            stream_sim.prices({"symbol": BTC, "price": "70000"})
            # Then the client receives exactly the deltas the simulator did not drop
            received = 0
            while True:
                message = await ws.receive_json(timeout=WATCH_TIMEOUT_S)
                if message["data"].get("lastPrice") == "70000.00":
                    break
                received += 1
            counts = stream_sim.message_counts("bybit", "public_stream")
            assert counts["sent"] == received + 2  # plus the snapshot and the last delta
            assert 10 < counts["stream_drop"] < 50
            await ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_delayed_stream_delivers_late_and_in_order(exchange: str, stream_sim: StreamSimulator):
    async def scenario() -> None:
        client = await pro_client(exchange, stream_sim.base_url, stream_sim.ws_url)
        try:
            # Given every private message is held back 1.5 s
            stream_sim.faults(
                {
                    "rules": [
                        {
                            "kind": "stream_delay",
                            "exchange": exchange,
                            "operation": "private_stream",
                            "delay_ms": 1500,
                        }
                    ]
                }
            )
            pending = await watching_orders(client, stream_sim, exchange)
            # When an order fills
            started = time.monotonic()
            created = await client.create_order(BTC, "market", "buy", 0.005)
            # Then it arrives, complete, no sooner than 1.5 s later
            order = await watch_until(
                lambda: client.watch_orders(),
                lambda: find(client.orders, id=created["id"], status="closed"),
                pending=pending,
            )
            assert time.monotonic() - started >= 1.5
            assert order["filled"] == pytest.approx(0.005)
            assert stream_sim.message_counts(exchange, "private_stream")["stream_delay"] >= 1
        finally:
            await close_client(client)

    asyncio.run(scenario())


def test_an_expired_listen_key_ends_the_user_stream_until_ccxt_makes_a_new_one(
    stream_sim: StreamSimulator,
):
    async def scenario() -> None:
        client = await pro_client("binance", stream_sim.base_url, stream_sim.ws_url)
        try:
            # Given a client watching its orders, and a second listener on the same key
            pending = await watching_orders(client, stream_sim, "binance")
            old_key = stream_sim.streams()["listenKeys"]["binance"]["listenKey"]
            async with aiohttp.ClientSession() as session:
                url = f"{stream_sim.ws_url}/binance/private/ws?listenKey={old_key}"
                listener = await session.ws_connect(url)
                await eventually(lambda: len(stream_sim.connections("binance")) == 2)
                # When the key expires at the next private message
                stream_sim.faults({"rules": [{"kind": "listen_key_expired", "count": 1}]})
                await client.create_order(BTC, "market", "buy", 0.005)
                # Then the stream says so, as Binance does
                event = await listener.receive_json(timeout=WATCH_TIMEOUT_S)
                assert event["e"] == "listenKeyExpired"
                assert event["listenKey"] == old_key
                await listener.close()
            # And ccxt's renewal of the key (it would come after 20 minutes) fails:
            # ccxt ends the watch with AuthenticationError (-1125)
            await client.keep_alive_listen_key({"type": "linear"})
            with pytest.raises(ccxt.AuthenticationError, match="-1125"):
                await asyncio.wait_for(pending, WATCH_TIMEOUT_S)
            # And watching again makes a new key, on which orders arrive
            again = await watching_orders(client, stream_sim, "binance")
            assert stream_sim.streams()["listenKeys"]["binance"]["listenKey"] != old_key
            created = await client.create_order(BTC, "market", "buy", 0.005)
            await watch_until(
                lambda: client.watch_orders(),
                lambda: find(client.orders, id=created["id"], status="closed"),
                pending=again,
            )
        finally:
            await close_client(client)

    asyncio.run(scenario())


# --- fault plans --------------------------------------------------------------------------


def test_stream_fault_rules_are_validated_and_described(stream_sim: StreamSimulator):
    # Given a plan with every stream kind
    plan = {
        "rules": [
            {"kind": "stream_delay", "delay_ms": 200},
            {"kind": "stream_drop", "operation": "public_stream", "probability": 0.1},
            {"kind": "stream_disconnect", "exchange": "bybit", "count": 2},
            {"kind": "stream_stall", "symbol": BTC, "count": 1},
            {"kind": "listen_key_expired", "count": 1},
        ]
    }
    # Then it is taken as given, with each kind's default stream
    described = stream_sim.faults(plan)["plan"]["rules"]
    assert [(r["kind"], r["operation"]) for r in described] == [
        ("stream_delay", "any"),
        ("stream_drop", "public_stream"),
        ("stream_disconnect", "any"),
        ("stream_stall", "any"),
        ("listen_key_expired", "private_stream"),
    ]
    # And REST requests are untouched by stream rules
    assert stream_sim.raw("GET", "/fapi/v1/ticker/price?symbol=BTCUSDT").ok
    # And a stream kind with a REST operation, or the reverse, is refused
    for rule in (
        {"kind": "stream_drop", "operation": "create_order"},
        {"kind": "latency", "operation": "private_stream"},
        {"kind": "stream_delay", "delay_ms": -1},
    ):
        response = requests.post(f"{stream_sim.base_url}/_sim/faults", json={"rules": [rule]})
        assert response.status_code == 400, rule
        assert "rule 0" in response.json()["error"]


def test_a_stream_message_gets_every_delay_and_the_first_outcome_that_fires():
    plan = parse_plan(
        {
            "rules": [
                {"kind": "stream_delay", "delay_ms": 100},
                {"kind": "stream_drop", "exchange": "bybit", "count": 1},
                {"kind": "listen_key_expired", "count": 1},
                {"kind": "stream_stall", "count": 1},
                {"kind": "stream_delay", "operation": "public_stream", "delay_ms": 50},
                {"kind": "latency", "latency_ms": 999},
            ]
        },
        default_seed=0,
    )
    # A Binance private message with a listen key: both applicable delays do not
    # apply (the second is public only), the key expires, and the stall waits its turn
    decision = plan.decide_stream("binance", "private_stream", BTC, has_listen_key=True)
    assert decision.delay_s == pytest.approx(0.1)
    assert decision.outcome is not None and decision.outcome.kind == "listen_key_expired"
    # A Bybit public message: the drop fires; the stall is not consumed by it
    decision = plan.decide_stream("bybit", "public_stream", None, has_listen_key=False)
    assert decision.delay_s == pytest.approx(0.15)
    assert decision.outcome is not None and decision.outcome.kind == "stream_drop"
    # Bybit has no listen keys: the next private message stalls
    decision = plan.decide_stream("bybit", "private_stream", ETH, has_listen_key=False)
    assert decision.outcome is not None and decision.outcome.kind == "stream_stall"
    # And REST requests see none of the stream rules, only their own
    assert plan.decide("binance", "create_order", BTC).outcome is None
    assert plan.decide("binance", "create_order", BTC).delay_s == pytest.approx(0.999)


@pytest.mark.parametrize(
    ("name", "served"),
    [
        ("btcusdt@markPrice", ("BTCUSDT", "markPrice", False)),
        ("btcusdt@markPrice@1s", ("BTCUSDT", "markPrice", True)),
        ("!markPrice@arr@1s", (None, "markPrice", True)),
        ("!miniTicker@arr", (None, "miniTicker", False)),
        ("ethusdt@ticker", ("ETHUSDT", "ticker", False)),
        ("!bookTicker", (None, "bookTicker", False)),
        ("btcusdt@depth@100ms", None),
        ("btcusdt@ticker@1s", None),
        ("!ticker", None),
        ("btcusdt", None),
        (7, None),
    ],
)
def test_binance_stream_names_the_simulator_serves(name: object, served: tuple | None):
    stream = StreamName.parse(name)
    if served is None:
        assert stream is None
    else:
        assert stream is not None
        assert (stream.market_id, stream.channel, stream.fast) == served


# --- Bybit authentication -----------------------------------------------------------------


def test_bybit_refuses_a_wrong_signature_through_ccxt(stream_sim: StreamSimulator):
    async def scenario() -> None:
        client = await pro_client("bybit", stream_sim.base_url, stream_sim.ws_url)
        client.secret = "not-the-secret"
        try:
            # When a client signs its stream auth with the wrong secret
            # Then ccxt raises the exchange's refusal, and no private topic is served
            with pytest.raises(ccxt.ExchangeError, match="Error sign"):
                await asyncio.wait_for(client.watch_orders(), WATCH_TIMEOUT_S)
            assert not any(c.get("authenticated") for c in stream_sim.connections("bybit"))
        finally:
            await close_client(client)

    asyncio.run(scenario())


def sign_bybit(secret: str, expires_ms: int) -> str:
    return hmac.new(
        secret.encode(), f"GET/realtime{expires_ms}".encode(), hashlib.sha256
    ).hexdigest()


def test_bybit_auth_checks_key_expiry_and_signature(stream_sim: StreamSimulator):
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{stream_sim.ws_url}/bybit/v5/private")

            async def ask(request: dict) -> dict:
                await ws.send_json(request)
                return await ws.receive_json(timeout=WATCH_TIMEOUT_S)

            later = int(time.time() * 1000) + 10_000
            # A private topic before auth is refused
            answer = await ask({"op": "subscribe", "req_id": "1", "args": ["order"]})
            assert answer["success"] is False and answer["ret_msg"] == "Request not authorized"
            # An unknown key, a past expiry and a wrong signature are refused
            answer = await ask({"op": "auth", "args": ["who", later, sign_bybit("x", later)]})
            assert answer["success"] is False and answer["op"] == "auth"
            past = int(time.time() * 1000) - 1000
            answer = await ask(
                {"op": "auth", "args": ["sim-key", past, sign_bybit("sim-secret", past)]}
            )
            assert answer == {
                "success": False,
                "ret_msg": "Params Error",
                "conn_id": answer["conn_id"],
                "op": "auth",
            }
            answer = await ask({"op": "auth", "args": ["sim-key", later, sign_bybit("x", later)]})
            assert answer["success"] is False and answer["ret_msg"].startswith("Error sign")
            # The real signature is accepted, and then topics can be subscribed
            answer = await ask(
                {
                    "op": "auth",
                    "req_id": "a",
                    "args": ["sim-key", later, sign_bybit("sim-secret", later)],
                }
            )
            assert answer["success"] is True and answer["req_id"] == "a"
            answer = await ask(
                {"op": "subscribe", "req_id": "2", "args": ["order", "execution", "position"]}
            )
            assert answer["success"] is True and answer["req_id"] == "2"
            await ws.close()

    asyncio.run(scenario())
