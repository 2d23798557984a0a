"""Real ``ccxt.pro`` clients routed to the simulator, for the stream tests.

A ccxt.pro client is configured exactly as a user would point it at the
simulator's stream port (``urls.api.ws``); its REST calls (markets, orders,
listen keys, position snapshots) go to the simulator's REST port through
``SimRoutedSession``, the asyncio counterpart of the gateway's transport: the
URL ccxt signs and maps errors for stays the real exchange's, only scheme and
host change on the way out. Both come from ``workers.streams.clients``, where the
stream holder builds its clients the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import ccxt.pro as ccxtpro

from workers.exchange.gateway import client_options
from workers.settings import ExchangeAccount
from workers.streams.clients import SimRoutedSession, ws_urls

T = TypeVar("T")

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
# Long enough for any honest answer on a busy 2-core machine; every wait below
# returns as soon as the awaited message is there.
WATCH_TIMEOUT_S = 10.0


async def pro_client(exchange: str, sim_url: str, ws_url: str, **options: Any) -> ccxtpro.Exchange:
    """A ccxt.pro client for ``exchange`` (binance or bybit) with markets loaded."""
    account = ExchangeAccount(
        name=exchange, ccxt_class="binanceusdm" if exchange == "binance" else "bybit"
    )
    config = client_options(account, timeout_ms=5000)
    config["options"].update(options)
    config["session"] = SimRoutedSession(sim_url)
    client = getattr(ccxtpro, account.ccxt_class)(config)
    client.urls["api"]["ws"] = client.deep_extend(
        client.urls["api"]["ws"], ws_urls(exchange, ws_url)
    )
    await client.load_markets()
    return client


async def close_client(client: ccxtpro.Exchange) -> None:
    session = client.session
    await client.close()
    await session.close()


async def watch_until(
    watch: Callable[[], Awaitable[Any]],
    condition: Callable[[], T],
    pending: Awaitable[Any] | None = None,
    timeout_s: float = WATCH_TIMEOUT_S,
) -> T:
    """Keep ``watch`` running until ``condition()`` returns something truthy; return it.

    ``condition`` reads what the stream delivered: a client's cache (``orders``,
    ``myTrades``, ``tickers``), which only stream messages fill, or results a
    ``watch`` wrapper collects. A ccxt watch resolves on the next message only,
    and messages that land between two calls reach the cache but no caller, so
    the condition is checked before each watch and again at least every second.
    ``pending`` is a watch started before the action under test (its errors,
    such as a NetworkError, surface here).
    """
    deadline = time.monotonic() + timeout_s
    if pending is not None:
        await asyncio.wait_for(pending, timeout_s)
    while True:
        value = condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the stream did not deliver the awaited state in {timeout_s}s")
        try:
            await asyncio.wait_for(watch(), min(remaining, 1.0))
        except TimeoutError:
            continue


def find(items: Any, **fields: Any) -> Any:
    """The last item (a ccxt order, trade, position dict) with these field values."""
    for item in reversed(list(items or [])):
        if all(item.get(name) == value for name, value in fields.items()):
            return item
    return None


async def eventually(
    condition: Callable[[], Any], timeout_s: float = WATCH_TIMEOUT_S, message: str = ""
) -> Any:
    """Poll ``condition`` (a blocking call runs in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.02)
