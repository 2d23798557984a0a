"""The simulator's WebSocket streams through the real ccxt.pro clients, on both exchanges.

Each test configures a ``ccxt.pro.binanceusdm`` or ``ccxt.pro.bybit`` client as a
user would (``urls.api.ws``), trades through its REST side, and checks that what
the stream pushes is what the REST API reports at the same moment.
"""

from __future__ import annotations

import asyncio

import ccxt
import pytest

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


def private_subscription(exchange: str, topic: str) -> str:
    """What /_sim/streams shows once a client listens to ``topic`` on its private stream."""
    return "listenKey" if exchange == "binance" else topic


def fetch_params(exchange: str) -> dict:
    return {"acknowledged": True} if exchange == "bybit" else {}


def position_update(seen: list[dict], symbol: str, contracts: float) -> dict | None:
    """The last streamed position of ``symbol`` with ``contracts`` among ``seen``."""
    for position in reversed(seen):
        if position["symbol"] == symbol and (position["contracts"] or 0) == pytest.approx(
            contracts
        ):
            return position
    return None


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_filled_order_and_its_fill_arrive_as_rest_reports_them(
    exchange: str, stream_sim: StreamSimulator
):
    async def scenario() -> None:
        client = await pro_client(exchange, stream_sim.base_url, stream_sim.ws_url)
        try:
            # Given a client watching its orders and its fills
            orders = asyncio.ensure_future(client.watch_orders(BTC))
            trades = asyncio.ensure_future(client.watch_my_trades(BTC))
            for topic in ("order", "execution"):
                await eventually(
                    lambda t=topic: stream_sim.subscribed(
                        exchange, private_subscription(exchange, t)
                    )
                )
            # When a market buy of 0.01 BTC fills at 65,000
            created = await client.create_order(
                BTC, "market", "buy", 0.01, None, {"clientOrderId": f"stream-fill-{exchange}"}
            )
            # Then the stream reports the order closed, exactly as REST does now
            order = await watch_until(
                lambda: client.watch_orders(BTC),
                lambda: find(client.orders, id=created["id"], status="closed"),
                pending=orders,
            )
            rest = await client.fetch_order(created["id"], BTC, fetch_params(exchange))
            for field in ("id", "clientOrderId", "status", "side", "amount", "filled", "average"):
                assert order[field] == rest[field], field
            assert order["filled"] == pytest.approx(0.01)
            assert order["average"] == pytest.approx(65000)
            assert order["reduceOnly"] is False
            # And the fill arrives with its price, amount and taker fee
            fill = await watch_until(
                lambda: client.watch_my_trades(BTC),
                lambda: find(client.myTrades, order=created["id"]),
                pending=trades,
            )
            assert fill["side"] == "buy"
            assert fill["amount"] == pytest.approx(0.01)
            assert fill["price"] == pytest.approx(65000)
            assert fill["takerOrMaker"] == "taker"
            taker_rate = 0.0005 if exchange == "binance" else 0.00055
            assert fill["fee"]["cost"] == pytest.approx(0.01 * 65000 * taker_rate)
            assert fill["fee"]["currency"] == "USDT"
        finally:
            await close_client(client)

    asyncio.run(scenario())


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_positions_on_the_stream_follow_rest_through_open_and_close(
    exchange: str, stream_sim: StreamSimulator
):
    async def scenario() -> None:
        client = await pro_client(exchange, stream_sim.base_url, stream_sim.ws_url)
        try:
            # Given a flat account: ccxt's first answer is its REST snapshot
            snapshot = await asyncio.wait_for(client.watch_positions([BTC]), WATCH_TIMEOUT_S)
            assert not any(p["contracts"] for p in snapshot)
            seen: list[dict] = []

            async def watch_btc() -> None:
                seen.extend(await client.watch_positions([BTC]))

            pending = asyncio.ensure_future(watch_btc())
            await eventually(
                lambda: stream_sim.subscribed(exchange, private_subscription(exchange, "position"))
            )
            # When 0.02 BTC is bought
            await client.create_order(BTC, "market", "buy", 0.02)
            # Then the stream shows the long with the entry price REST reports
            position = await watch_until(
                watch_btc, lambda: position_update(seen, BTC, 0.02), pending=pending
            )
            rest = next(p for p in await client.fetch_positions([BTC]) if p["contracts"])
            assert position["side"] == rest["side"] == "long"
            assert position["contracts"] == pytest.approx(rest["contracts"])
            assert position["entryPrice"] == pytest.approx(rest["entryPrice"]) == 65000
            # When the position is closed by a reduce-only sell at 66,000
            stream_sim.prices({"symbol": BTC, "price": "66000"})
            pending = asyncio.ensure_future(watch_btc())
            await client.create_order(BTC, "market", "sell", 0.02, None, {"reduceOnly": True})
            # Then the stream says flat, and so does REST
            await watch_until(watch_btc, lambda: position_update(seen, BTC, 0), pending=pending)
            assert not any(p["contracts"] for p in await client.fetch_positions([BTC]))
            assert stream_sim.position(exchange, BTC) is None
        finally:
            await close_client(client)

    asyncio.run(scenario())


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_resting_order_reports_open_then_filled_by_a_price_move_then_a_cancel(
    exchange: str, stream_sim: StreamSimulator
):
    async def scenario() -> None:
        client = await pro_client(exchange, stream_sim.base_url, stream_sim.ws_url)
        try:
            pending = asyncio.ensure_future(client.watch_orders(ETH))
            await eventually(
                lambda: stream_sim.subscribed(exchange, private_subscription(exchange, "order"))
            )
            # Given a resting buy at 3,400 and a resting sell at 3,700 (ETH at 3,500)
            buy = await client.create_order(ETH, "limit", "buy", 0.1, 3400)
            sell = await client.create_order(ETH, "limit", "sell", 0.1, 3700)
            await watch_until(
                lambda: client.watch_orders(ETH),
                lambda: find(client.orders, id=buy["id"]) and find(client.orders, id=sell["id"]),
                pending=pending,
            )
            for each in (buy, sell):
                order = find(client.orders, id=each["id"])
                assert order["status"] == "open" and order["filled"] == 0
            # When the price falls through the buy's limit
            stream_sim.prices({"symbol": ETH, "price": "3390"})
            # Then the buy is reported filled at its limit price
            order = await watch_until(
                lambda: client.watch_orders(ETH),
                lambda: find(client.orders, id=buy["id"], status="closed"),
            )
            assert order["average"] == pytest.approx(3400)
            assert order["filled"] == pytest.approx(0.1)
            # When the sell is cancelled
            await client.cancel_order(sell["id"], ETH)
            # Then the stream reports it cancelled, as REST does
            order = await watch_until(
                lambda: client.watch_orders(ETH),
                lambda: find(client.orders, id=sell["id"], status="canceled"),
            )
            rest = await client.fetch_order(sell["id"], ETH, fetch_params(exchange))
            assert rest["status"] == "canceled"
            assert order["filled"] == rest["filled"] == 0
        finally:
            await close_client(client)

    asyncio.run(scenario())


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_tickers_follow_the_price_as_rest_reports_it(exchange: str, stream_sim: StreamSimulator):
    async def scenario() -> None:
        client = await pro_client(exchange, stream_sim.base_url, stream_sim.ws_url)
        try:
            # Given a client watching BTC's ticker and the BTC and ETH tickers
            first = await watch_until(
                lambda: client.watch_ticker(BTC), lambda: client.tickers.get(BTC)
            )
            assert first["symbol"] == BTC and first["last"] == 65000
            both = await watch_until(
                lambda: client.watch_tickers([BTC, ETH]), lambda: client.tickers.get(ETH)
            )
            assert both["last"] == 3500
            # When BTC moves to 64,000.5
            stream_sim.prices({"symbol": BTC, "price": "64000.5"})
            # Then the stream shows the new last price, and REST agrees
            ticker = await watch_until(
                lambda: client.watch_ticker(BTC),
                lambda: client.tickers[BTC]["last"] == 64000.5 and client.tickers[BTC],
            )
            assert ticker["timestamp"] is not None
            rest = await client.fetch_ticker(BTC)
            assert rest["last"] == ticker["last"]
            assert client.tickers[ETH]["last"] == 3500
        finally:
            await close_client(client)

    asyncio.run(scenario())


def test_binance_mark_prices_follow_the_price_as_rest_reports_it(stream_sim: StreamSimulator):
    async def scenario() -> None:
        client = await pro_client("binance", stream_sim.base_url, stream_sim.ws_url)
        try:
            # Given the mark price streams of BTC and of every market
            mark = await asyncio.wait_for(client.watch_mark_price(BTC), WATCH_TIMEOUT_S)
            assert mark["markPrice"] == 65000
            marks = await asyncio.wait_for(client.watch_mark_prices(), WATCH_TIMEOUT_S)
            assert {BTC, ETH} <= set(marks)
            # When ETH moves to 3,456.78
            stream_sim.prices({"symbol": ETH, "price": "3456.78", "exchange": "binance"})
            # Then the streams carry it, as the REST premium index does
            eth = await watch_until(
                lambda: client.watch_mark_prices(),
                lambda: client.tickers[ETH]["markPrice"] == 3456.78 and client.tickers[ETH],
            )
            assert eth["symbol"] == ETH and eth["indexPrice"] == 3456.78
            rest = await client.fetch_mark_price(ETH)
            assert rest["markPrice"] == eth["markPrice"]
        finally:
            await close_client(client)

    asyncio.run(scenario())


def test_a_quiet_binance_market_still_pushes_its_mark_price(stream_sim: StreamSimulator):
    async def scenario() -> None:
        client = await pro_client("binance", stream_sim.base_url, stream_sim.ws_url)
        try:
            # Given no price change at all, the 1 s mark price stream still pushes
            first = await asyncio.wait_for(client.watch_mark_price(BTC), WATCH_TIMEOUT_S)
            second = await asyncio.wait_for(client.watch_mark_price(BTC), WATCH_TIMEOUT_S)
            # Then each push is a new event of the same price
            assert second["timestamp"] > first["timestamp"]
            assert second["markPrice"] == first["markPrice"] == 65000
        finally:
            await close_client(client)

    asyncio.run(scenario())


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_reset_closes_the_streams_and_clients_reconnect(
    exchange: str, stream_sim: StreamSimulator
):
    async def scenario() -> None:
        client = await pro_client(exchange, stream_sim.base_url, stream_sim.ws_url)
        try:
            # Given a client watching its orders
            pending = asyncio.ensure_future(client.watch_orders(BTC))
            await eventually(
                lambda: stream_sim.subscribed(exchange, private_subscription(exchange, "order"))
            )
            # When the simulator is reset (a new exchange: every account event before is gone)
            stream_sim.reset()
            # Then the watch fails with ccxt's NetworkError, and the stream is gone
            with pytest.raises(ccxt.NetworkError):
                await asyncio.wait_for(pending, WATCH_TIMEOUT_S)
            assert stream_sim.connections(exchange) == []
            # And watching again reconnects and carries the new account's orders
            again = asyncio.ensure_future(client.watch_orders(BTC))
            await eventually(
                lambda: stream_sim.subscribed(exchange, private_subscription(exchange, "order"))
            )
            created = await client.create_order(BTC, "market", "buy", 0.005)
            await watch_until(
                lambda: client.watch_orders(BTC),
                lambda: find(client.orders, id=created["id"], status="closed"),
                pending=again,
            )
        finally:
            await close_client(client)

    asyncio.run(scenario())
