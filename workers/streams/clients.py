"""ccxt.pro clients for the accounts whose exchanges push streams execq consumes.

A stream client is built from the same settings as the REST gateway's
(``workers.exchange.gateway.client_options``, the venue's ``apply_mode``), so
keys, modes and options agree. In ``sim`` mode its WebSocket URLs point at
``settings.sim_ws_url`` (the simulator's contract: ``/binance/ws``,
``/bybit/v5/public/linear``, ``/bybit/v5/private``) and its REST calls (markets,
Binance's listen key, the snapshot ``watch_positions`` starts from) go to
``settings.sim_url`` through ``SimRoutedSession``; the URLs ccxt signs and maps
errors for stay the real exchange's.

Only Binance USDⓈ-M and Bybit have streams here; any other exchange gets no client
(``stream_venue`` returns None) and is polled as before.

Per exchange (``StreamVenue``):

- the keep-alive: every socket is pinged every ``keepalive_interval_s`` so that an
  idle but healthy stream still shows frames (``workers.execution.streams``);
- Binance's listen key: ccxt.pro ignores ``listenKeyExpired`` (its watch calls just
  wait) and renews the key only once by itself, 20 minutes after making it. The
  client here turns ``listenKeyExpired`` into ``ListenKeyExpired`` on the pending
  watch calls (the holder then reconnects with a new client, whose first watch makes
  a new key), and the holder renews the key every ``LISTEN_KEY_RENEW_S`` for as long
  as the client lives (ccxt's own renewal is put off: it would outlive the client).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import ccxt.pro as ccxtpro
from ccxt.base.errors import ExchangeError

from workers.exchange.gateway import GatewayError, client_options
from workers.exchange.ratelimit import draw_request_budget
from workers.exchange.venues import VENUES
from workers.execution.streams import CCXT_PONG_MISSES, keepalive_interval_s
from workers.settings import ExchangeAccount, Settings

__all__ = [
    "ListenKeyExpired",
    "SimRoutedSession",
    "StreamVenue",
    "build_stream_client",
    "close_stream_client",
    "last_frame_s",
    "socket_open",
    "stream_venue",
    "ws_urls",
]


# Seconds between renewals of a Binance listen key, which lives 60 minutes after its last
# renewal: ccxt's own rate (20 minutes), so two renewals may fail before it expires.
LISTEN_KEY_RENEW_S = 20 * 60
# ccxt.pro's own renewal, put off for 30 days (see _BinanceStreams.configure).
CCXT_LISTEN_KEY_REFRESH_MS = 30 * 24 * 3600 * 1000


class ListenKeyExpired(ExchangeError):
    """Binance said the user data stream's listen key expired: the stream is over."""


class SimRoutedSession:
    """An aiohttp session for a ccxt async client whose REST requests go to the simulator.

    ccxt calls ``session.get/post/put/delete(url, ...)``; each becomes a request
    to ``sim_url`` with the same path and query. WebSocket connections
    (``ws_connect``) are left alone: their URLs already name the stream port.
    """

    def __init__(self, sim_url: str) -> None:
        self._sim = urlsplit(sim_url)
        self._session = aiohttp.ClientSession()

    def _routed(self, method: str) -> Callable[..., Any]:
        def request(url: Any, **kwargs: Any) -> Any:
            # ccxt passes the URL as the text it signed; only scheme and host change.
            original = urlsplit(str(url))
            target = urlunsplit(
                (self._sim.scheme, self._sim.netloc, original.path, original.query, "")
            )
            return self._session.request(method, target, **kwargs)

        return request

    def __getattr__(self, name: str) -> Any:
        if name in ("get", "post", "put", "delete"):
            return self._routed(name.upper())
        return getattr(self._session, name)

    async def close(self) -> None:
        await self._session.close()


def ws_urls(exchange: str, ws_url: str) -> dict[str, Any]:
    """The contract: where a ccxt.pro client of ``exchange`` (``binance`` or ``bybit``)
    finds the simulator's streams under ``ws_url``."""
    return _BY_EXCHANGE[exchange].sim_ws_urls(ws_url)


class _SharedBudget:
    """A ccxt.pro client whose REST calls draw from the account's shared request budget,
    as the workers' do (``workers.exchange.ratelimit``)."""

    execq_account: str

    async def fetch(
        self, url: str, method: str = "GET", headers: Any = None, body: Any = None
    ) -> Any:
        await asyncio.to_thread(draw_request_budget, self.execq_account, method, url)
        return await super().fetch(url, method, headers, body)  # type: ignore[misc]


class _BinanceUsdm(_SharedBudget, ccxtpro.binanceusdm):
    """ccxt.pro's Binance USDⓈ-M client, told that a listen key expired."""

    def handle_message(self, client: Any, message: Any) -> Any:
        if isinstance(message, dict) and message.get("e") == "listenKeyExpired":
            self.options["listenKeyExpired"] = True
            client.reject(ListenKeyExpired(f"{self.id} listen key expired: {message}"))
            return None
        return super().handle_message(client, message)


class _Bybit(_SharedBudget, ccxtpro.bybit):
    """ccxt.pro's Bybit client, counting the subscriptions Bybit acknowledged."""

    def handle_message(self, client: Any, message: Any) -> Any:
        if (
            isinstance(message, dict)
            and message.get("op") == "subscribe"
            and message.get("success") is True
        ):
            self.options["subscriptionsAcknowledged"] = (
                self.options.get("subscriptionsAcknowledged", 0) + 1
            )
        return super().handle_message(client, message)


class StreamVenue:
    """What the holder needs to know of one exchange's streams."""

    #: The simulator's and the ledger's name of the exchange.
    exchange: ClassVar[str]
    ccxt_class: ClassVar[type[ccxtpro.Exchange]]

    #: Seconds between two renewals of the private stream's credentials (None: none needed).
    renew_every_s: ClassVar[float | None] = None

    @staticmethod
    def sim_ws_urls(ws_url: str) -> dict[str, Any]:
        """The client's ``urls.api.ws`` entries for the simulator's streams at ``ws_url``."""
        raise NotImplementedError

    def configure(self, client: ccxtpro.Exchange) -> None:
        """Adjust a new client's options for the holder's way of running it."""

    def private_subscribed(self, client: ccxtpro.Exchange, topics: int) -> bool:
        """Whether the exchange has taken all ``topics`` subscriptions of the private
        socket: from then on every event reaches it, so a reconciliation that starts
        later misses nothing."""
        return socket_open(client) and last_frame_s(client) is not None

    def expired(self, client: ccxtpro.Exchange) -> bool:
        """Whether the exchange ended the private stream for good (a new client must
        connect)."""
        return False

    async def renew(self, client: ccxtpro.Exchange) -> None:
        """Renew the private stream's credentials (the holder calls it every
        ``renew_every_s`` while the client lives)."""


class _BinanceStreams(StreamVenue):
    exchange = "binance"
    ccxt_class = _BinanceUsdm
    renew_every_s = LISTEN_KEY_RENEW_S

    @staticmethod
    def sim_ws_urls(ws_url: str) -> dict[str, Any]:
        # ccxt derives /binance/private/ws?listenKey=... and /binance/market/ws/N from this.
        return {"linear": f"{ws_url}/binance/ws"}

    def configure(self, client: ccxtpro.Exchange) -> None:
        # ccxt.pro schedules its one renewal on the event loop, where it outlives the client:
        # after a reconnect it would run on the closed client (which opens a session of its
        # own for it). The holder renews (``renew``) in a task that ends with the client
        # instead, so ccxt's is put off beyond any client's life.
        client.options["listenKeyRefreshRate"] = CCXT_LISTEN_KEY_REFRESH_MS

    def private_subscribed(self, client: ccxtpro.Exchange, topics: int) -> bool:
        # The listen key is in the socket's URL: its events flow from the moment it opens.
        return socket_open(client)

    def expired(self, client: ccxtpro.Exchange) -> bool:
        return bool(client.options.get("listenKeyExpired"))

    async def renew(self, client: ccxtpro.Exchange) -> None:
        # A failed renewal fails the pending watch calls (AuthenticationError): the holder
        # reconnects and the new client makes a new key.
        await client.keep_alive_listen_key({"type": "linear"})


class _BybitStreams(StreamVenue):
    exchange = "bybit"
    ccxt_class = _Bybit

    @staticmethod
    def sim_ws_urls(ws_url: str) -> dict[str, Any]:
        return {
            "public": {"linear": f"{ws_url}/bybit/v5/public/linear"},
            "private": {"contract": f"{ws_url}/bybit/v5/private"},
        }

    def private_subscribed(self, client: ccxtpro.Exchange, topics: int) -> bool:
        # Bybit acknowledges each subscribe (after the auth): events before it are not sent.
        acknowledged = int(client.options.get("subscriptionsAcknowledged", 0))
        return socket_open(client) and acknowledged >= topics


_STREAM_VENUES: dict[str, StreamVenue] = {
    "binanceusdm": _BinanceStreams(),
    "bybit": _BybitStreams(),
}
_BY_EXCHANGE = {venue.exchange: venue for venue in _STREAM_VENUES.values()}


def stream_venue(account: ExchangeAccount) -> StreamVenue | None:
    """The account's exchange streams, or None when execq consumes none of them."""
    return _STREAM_VENUES.get(account.ccxt_class)


def build_stream_client(account: ExchangeAccount, settings: Settings) -> ccxtpro.Exchange:
    """A new ccxt.pro client for ``account`` (markets not loaded; no I/O yet).

    Raises ``GatewayError`` for an account without streams or in a mode its exchange
    does not offer.
    """
    venue = stream_venue(account)
    if venue is None:
        raise GatewayError(f"account {account.name!r}: {account.ccxt_class} has no streams")
    config = client_options(account, settings.exchange_timeout_ms)
    sim = account.mode == "sim"
    if sim:
        config["session"] = SimRoutedSession(settings.sim_url)
    client = venue.ccxt_class(config)
    client.execq_account = account.name
    try:
        VENUES[account.ccxt_class].apply_mode(client, account.mode)
    except ValueError as exc:
        raise GatewayError(f"account {account.name!r}: {exc}") from None
    venue.configure(client)
    # Every socket this client opens pings at the holder's rate (see the liveness rule
    # in workers.execution.streams); ccxt's own pong watchdog only as a late safety net.
    client.options["ws"] = {
        **(client.options.get("ws") or {}),
        "keepAlive": int(keepalive_interval_s(settings.streams.stale_after_s) * 1000),
        "maxPingPongMisses": CCXT_PONG_MISSES,
    }
    if sim:
        client.urls["api"]["ws"] = client.deep_extend(
            client.urls["api"]["ws"], venue.sim_ws_urls(settings.sim_ws_url)
        )
    return client


async def close_stream_client(client: ccxtpro.Exchange) -> None:
    """Close the client's sockets and its HTTP session (also one given to it)."""
    session = client.session
    await client.close()
    if isinstance(session, SimRoutedSession):
        await session.close()


def _sockets(client: ccxtpro.Exchange) -> list[Any]:
    # ccxt keeps one ws Client per URL, and pseudo-clients that are never dialled
    # (Binance's "authenticationFlights"): only dialled ones count.
    return [ws for ws in (client.clients or {}).values() if ws.connection is not None]


def socket_open(client: ccxtpro.Exchange) -> bool:
    """Whether at least one of the client's sockets is open."""
    return any(not ws.closed() for ws in _sockets(client))


def last_frame_s(client: ccxtpro.Exchange) -> float | None:
    """Epoch seconds of the newest frame (message, answer or pong) on any open socket of
    the client, or of its connection when nothing came yet; None without an open socket."""
    newest: float | None = None
    for ws in _sockets(client):
        if ws.closed():
            continue
        at_ms = ws.last_message_at or ws.connectionEstablished
        if at_ms is not None and (newest is None or at_ms / 1000 > newest):
            newest = at_ms / 1000
    return newest
