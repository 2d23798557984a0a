"""One stream client's connection: its outgoing queue, writer task and protocol state.

Each connection has an outgoing queue and one writer task, so messages leave
in the order they were made, a delayed message holds back the ones behind it
(the stream lags, as a slow exchange's does), and a client that stops reading
never blocks the engine: past ``max_queued_messages`` it is disconnected, as
exchanges drop slow consumers.

Replies to the client's own requests (subscription acks, pongs) share the
queue but are never dropped or delayed by faults; a stalled connection sends
nothing at all, not even pongs, and keeps its TCP connection open.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from exchange_sim.engine import now_ms

if TYPE_CHECKING:
    from exchange_sim.streams.hub import StreamHub

log = logging.getLogger("exchange_sim.streams")

PRIVATE = "private_stream"
PUBLIC = "public_stream"
# Binance: "A User Data Stream listenKey is valid for 60 minutes after creation".
LISTEN_KEY_VALIDITY_S = 3600.0


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How the stream port behaves; every field has the real exchanges' value by default.

    ``listen_key_validity_s``: a Binance listen key expires this long after its
    creation or last keep-alive (Binance: 60 minutes); tests compress it.
    ``credentials``: API key -> secret, for Bybit's WebSocket ``auth``, whose
    HMAC the simulator checks (the gateway's placeholder keys in ``sim`` mode
    are ``sim-key`` / ``sim-secret``). ``refresh_interval_s``: Binance market
    streams push the current state this often even when nothing changed, as
    the real ones do on a liquid market (mark price without ``@1s``: three
    times as long). ``max_queued_messages``: unsent messages a connection may
    hold before it is dropped as a slow consumer.
    """

    listen_key_validity_s: float = LISTEN_KEY_VALIDITY_S
    credentials: Mapping[str, str] = field(default_factory=lambda: {"sim-key": "sim-secret"})
    refresh_interval_s: float = 1.0
    max_queued_messages: int = 10_000


class Connection:
    """One client's WebSocket: its outgoing queue, writer task and protocol state."""

    _ids = itertools.count(1)

    def __init__(
        self,
        hub: StreamHub,
        request: web.Request,
        ws: web.WebSocketResponse,
        exchange: str,
        stream: str,
    ) -> None:
        self.hub = hub
        self.request = request
        self.ws = ws
        self.exchange = exchange
        self.stream = stream
        self.id = f"{secrets.token_hex(8)}-{next(self._ids)}"
        self.connected_ms = now_ms()
        self.open = True
        self.stalled = False
        # Protocol state: subscribed streams or topics, Bybit's auth, Binance's key,
        # and whatever the protocol keeps per connection (Bybit's last ticker rows).
        self.subscriptions: set[str] = set()
        self.authenticated = False
        self.listen_key: str | None = None
        self.state: dict[str, Any] = {}
        self._queue: deque[tuple[float, str]] = deque()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._writer = self._loop.create_task(self._write_loop())

    # --- sending ----------------------------------------------------------------------

    def reply(self, payload: Any) -> None:
        """An answer to the client's own request: no faults, but nothing while stalled."""
        self.enqueue(orjson.dumps(payload).decode())

    def enqueue(self, text: str, delay_s: float = 0.0) -> None:
        if not self.open or self.stalled:
            return
        if len(self._queue) >= self.hub.settings.max_queued_messages:
            log.warning("stream client %s fell behind; disconnecting it", self.id)
            self.cut()
            return
        self._queue.append((self._loop.time() + delay_s, text))
        self._wake.set()

    async def _write_loop(self) -> None:
        try:
            while True:
                while not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                deliver_at, text = self._queue.popleft()
                wait_s = deliver_at - self._loop.time()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if self.stalled or not self.open:
                    continue
                await self.ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            # The peer went away mid-send (aiohttp raises ClientConnectionResetError,
            # a ConnectionError, or RuntimeError once the socket is closing).
            log.debug("stream client %s: send failed: %s", self.id, exc)

    # --- faults and shutdown ----------------------------------------------------------

    def cut(self) -> None:
        """Drop the TCP connection without a close frame, as a network failure would."""
        self._forget()
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def stall(self) -> None:
        """Send nothing more, ever, and keep the connection open."""
        self.stalled = True
        self._queue.clear()

    def close(self, code: int, message: str) -> asyncio.Task[bool]:
        """A clean close with a close frame (on reset); the task sending it."""
        self._forget()
        return self._loop.create_task(self.ws.close(code=code, message=message.encode()))

    def _forget(self) -> None:
        self.open = False
        self._queue.clear()
        self.hub.remove(self)

    def finished(self) -> None:
        self._forget()
        self._writer.cancel()

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "id": self.id,
            "exchange": self.exchange,
            "stream": self.stream,
            "path": self.request.path,
            "subscriptions": sorted(self.subscriptions),
            "connectedTime": self.connected_ms,
            "stalled": self.stalled,
            "queued": len(self._queue),
        }
        if self.listen_key is not None:
            described["listenKey"] = self.listen_key
        elif self.stream == PRIVATE:
            described["authenticated"] = self.authenticated
        return described


__all__ = ["PRIVATE", "PUBLIC", "Connection", "StreamSettings"]
