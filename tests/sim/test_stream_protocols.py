"""The streams' wire protocols where ccxt hides them: Binance listen keys and market
stream requests, Bybit's acks and pongs, and a listen key's natural expiry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import ccxt
import pytest
import requests

from tests.sim.conftest import StreamSimulator, start_stream_simulator
from tests.sim.stream_clients import (
    BTC,
    WATCH_TIMEOUT_S,
    close_client,
    eventually,
    find,
    pro_client,
    watch_until,
)

# --- Binance listen keys ----------------------------------------------------------------


def test_binance_listen_keys_follow_the_rest_lifecycle(stream_sim: StreamSimulator):
    async def scenario() -> None:
        client = await pro_client("binance", stream_sim.base_url, stream_sim.ws_url)
        try:
            # When a listen key is asked for twice
            first = await client.fapiPrivatePostListenKey()
            second = await client.fapiPrivatePostListenKey()
            # Then the account's one active key is returned both times, 64 characters long
            assert first["listenKey"] == second["listenKey"]
            assert len(first["listenKey"]) == 64 and first["listenKey"].isalnum()
            # And a keep-alive extends it
            assert await client.fapiPrivatePutListenKey() == first
            # When it is closed, a keep-alive fails as on Binance (-1125)
            assert await client.fapiPrivateDeleteListenKey() == {}
            with pytest.raises(ccxt.AuthenticationError, match="-1125"):
                await client.fapiPrivatePutListenKey()
            # And the next key is a new one
            third = await client.fapiPrivatePostListenKey()
            assert third["listenKey"] != first["listenKey"]
        finally:
            await close_client(client)

    asyncio.run(scenario())
    # A request without the API key header is refused like Binance does
    response = stream_sim.raw("POST", "/fapi/v1/listenKey")
    assert response.status_code == 401 and response.json()["code"] == -2014
    # And listen key requests are counted as their own operation
    assert stream_sim.requests_for("binance", "listen_key") == 7


def test_a_reset_keeps_the_listen_key(stream_sim: StreamSimulator):
    key = stream_sim.raw("POST", "/fapi/v1/listenKey", headers={"X-MBX-APIKEY": "k"}).json()
    stream_sim.reset()
    again = stream_sim.raw("POST", "/fapi/v1/listenKey", headers={"X-MBX-APIKEY": "k"}).json()
    assert again == key


# --- Binance market stream requests -----------------------------------------------------


def test_binance_market_streams_answer_subscribe_list_and_refuse_unserved_streams(
    stream_sim: StreamSimulator,
):
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{stream_sim.ws_url}/binance/market/ws/0")

            async def ask(request: dict) -> dict:
                await ws.send_json(request)
                while True:
                    answer = await ws.receive_json(timeout=WATCH_TIMEOUT_S)
                    if isinstance(answer, dict) and "id" in answer:
                        return answer

            streams = ["btcusdt@markPrice@1s", "!miniTicker@arr", "ethusdt@bookTicker"]
            # A subscription is acked with its id
            assert await ask({"method": "SUBSCRIBE", "params": streams, "id": 1}) == {
                "result": None,
                "id": 1,
            }
            # And listed
            listed = await ask({"method": "LIST_SUBSCRIPTIONS", "id": 2})
            assert listed == {"result": sorted(streams), "id": 2}
            # And an unsubscribe is acked and leaves the rest
            await ask({"method": "UNSUBSCRIBE", "params": ["ethusdt@bookTicker"], "id": 3})
            listed = await ask({"method": "LIST_SUBSCRIPTIONS", "id": 4})
            assert listed["result"] == sorted(streams[:2])
            # A stream the simulator does not serve is refused with an error, not silence
            refused = await ask({"method": "SUBSCRIBE", "params": ["btcusdt@depth"], "id": 5})
            assert refused["error"]["code"] == 2 and "btcusdt@depth" in refused["error"]["msg"]
            # And the subscribed streams push the documented events
            seen: set[str] = set()
            while not {"markPriceUpdate", "24hrMiniTicker"} <= seen:
                message = await ws.receive_json(timeout=WATCH_TIMEOUT_S)
                events = message if isinstance(message, list) else [message]
                seen.update(event["e"] for event in events)
            await ws.close()

    asyncio.run(scenario())


def test_an_unknown_stream_path_is_not_found(stream_sim: StreamSimulator):
    http = stream_sim.ws_url.replace("ws://", "http://")
    for path in ("/binance/futures/ws", "/bybit/v5/public/spot", "/okx/ws/v5/public"):
        assert requests.get(f"{http}{path}", timeout=10).status_code == 404


# --- Bybit acks and pongs ---------------------------------------------------------------


def test_bybit_answers_pings_and_subscriptions_in_each_streams_form(stream_sim: StreamSimulator):
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            public = await session.ws_connect(f"{stream_sim.ws_url}/bybit/v5/public/linear")
            private = await session.ws_connect(f"{stream_sim.ws_url}/bybit/v5/private")

            async def ask(ws: aiohttp.ClientWebSocketResponse, request: dict) -> dict:
                await ws.send_json(request)
                return await ws.receive_json(timeout=WATCH_TIMEOUT_S)

            # Public pong: ret_msg "pong"; private pong: op "pong" with the server time
            pong = await ask(public, {"op": "ping", "req_id": "p1"})
            assert pong["success"] is True and pong["ret_msg"] == "pong"
            assert pong["op"] == "ping" and pong["req_id"] == "p1"
            pong = await ask(private, {"op": "ping", "req_id": "p2"})
            assert pong["op"] == "pong" and pong["req_id"] == "p2" and pong["args"][0].isdigit()
            # A public subscription is acked, then the ticker's snapshot follows
            ack = await ask(
                public, {"op": "subscribe", "req_id": "s1", "args": ["tickers.BTCUSDT"]}
            )
            assert ack["success"] is True and ack["ret_msg"] == "subscribe"
            snapshot = await public.receive_json(timeout=WATCH_TIMEOUT_S)
            assert snapshot["topic"] == "tickers.BTCUSDT" and snapshot["type"] == "snapshot"
            assert snapshot["data"]["lastPrice"] == "65000.00"
            # The same topic twice, an unserved topic and an unknown symbol are refused
            for topic in ("tickers.BTCUSDT", "orderbook.50.BTCUSDT", "tickers.FOOUSDT"):
                refused = await ask(public, {"op": "subscribe", "req_id": "s2", "args": [topic]})
                assert refused["success"] is False and topic in refused["ret_msg"]
            # And a price change arrives as a delta of the changed fields
            stream_sim.prices({"symbol": BTC, "price": "65432.1"})
            delta = await public.receive_json(timeout=WATCH_TIMEOUT_S)
            assert delta["type"] == "delta"
            assert delta["data"]["lastPrice"] == "65432.10"
            assert delta["data"]["tickDirection"] == "PlusTick"
            assert "volume24h" not in delta["data"]
            await public.close()
            await private.close()

    asyncio.run(scenario())


# --- Binance listen key expiry ----------------------------------------------------------


@pytest.fixture(scope="module")
def short_listen_keys() -> Iterator[StreamSimulator]:
    """A simulator whose listen keys live 1 s without a keep-alive (Binance: 60 minutes)."""
    process, client = start_stream_simulator("--listen-key-validity-s", "1")
    yield client
    process.stop()


def test_a_listen_key_expires_without_keep_alive(short_listen_keys: StreamSimulator):
    sim = short_listen_keys
    sim.reset()
    headers = {"X-MBX-APIKEY": "k"}

    async def scenario() -> None:
        # Given a listen key and a user data stream on it
        key = sim.raw("POST", "/fapi/v1/listenKey", headers=headers).json()["listenKey"]
        async with aiohttp.ClientSession() as session:
            url = f"{sim.ws_url}/binance/private/ws?listenKey={key}"
            ws = await session.ws_connect(url)
            # When no keep-alive comes, the stream says the key expired
            event = await ws.receive_json(timeout=WATCH_TIMEOUT_S)
            assert event["e"] == "listenKeyExpired" and event["listenKey"] == key
            assert isinstance(event["E"], int)
            # And the socket stays open, as Binance's does
            assert not ws.closed
            assert sim.connections("binance")[0]["listenKey"] == key
            await ws.close()
        # And a keep-alive is too late (-1125); a new key replaces it
        late = sim.raw("PUT", "/fapi/v1/listenKey", headers=headers)
        assert late.status_code == 400 and late.json()["code"] == -1125
        fresh = sim.raw("POST", "/fapi/v1/listenKey", headers=headers).json()["listenKey"]
        assert fresh != key

    asyncio.run(scenario())


def test_keep_alives_hold_the_listen_key(short_listen_keys: StreamSimulator):
    sim = short_listen_keys
    sim.reset()

    async def scenario() -> None:
        client = await pro_client("binance", sim.base_url, sim.ws_url)

        async def keep_alive() -> None:
            # ccxt 4.5 (Python) schedules its own renewal once only, so a long-lived
            # user stream renews the key itself: every 0.25 s here, for a 1 s validity.
            while True:
                await client.fapiPrivatePutListenKey()
                await asyncio.sleep(0.25)

        renewing = None
        try:
            # Given a user data stream whose key is renewed in time
            pending = asyncio.ensure_future(client.watch_orders())
            await eventually(lambda: sim.subscribed("binance", "listenKey"))
            key = sim.streams()["listenKeys"]["binance"]["listenKey"]
            renewing = asyncio.ensure_future(keep_alive())
            # When more than the key's validity has passed in keep-alives
            await eventually(lambda: sim.requests_for("binance", "listen_key") >= 8)
            # Then the key is still the active one, and orders still arrive on it
            assert sim.streams()["listenKeys"]["binance"]["listenKey"] == key
            created = await client.create_order(BTC, "market", "buy", 0.005)
            await watch_until(
                lambda: client.watch_orders(),
                lambda: find(client.orders, id=created["id"], status="closed"),
                pending=pending,
            )
        finally:
            if renewing is not None:
                renewing.cancel()
            await close_client(client)

    asyncio.run(scenario())
