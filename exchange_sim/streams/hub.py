"""The stream hub: fan-out of engine events to connections, stream faults, the port.

The hub listens to each exchange's matching engine (``Exchange.listeners``). An
exchange's protocol (``binance.py``, ``bybit.py``) turns an engine event into
the exchange's message while the engine call is still running, so the message
shows the account exactly as a REST request would at that moment, and hands it
to ``StreamHub.deliver`` for each connection that should get it. ``deliver``
asks the fault plan about that message (drop, delay, stall, disconnect, an
expired listen key) and queues it on the connection (``connection.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from exchange_sim.engine import EngineEvent, Exchange, Listener
from exchange_sim.faults import FaultPlan
from exchange_sim.streams.binance import BinanceStreams
from exchange_sim.streams.bybit import BybitStreams
from exchange_sim.streams.connection import Connection, StreamSettings
from exchange_sim.streams.listen_keys import ListenKeys

log = logging.getLogger("exchange_sim.streams")

# Close code sent to every stream client when the simulator is reset (RFC 6455: 1012
# "service restart"): the account they watched is gone and they must reconcile.
RESET_CLOSE_CODE = 1012


class SimStateLike(Protocol):
    exchanges: dict[str, Exchange]
    faults: FaultPlan


class ExchangeStreams(Protocol):
    """One exchange's stream protocol (``binance.py``, ``bybit.py``; OKX could follow)."""

    name: str

    def route(self, path: str) -> tuple[str, Callable[[Connection], None]] | None:
        """For a path under ``/<name>``: (stream, function called once a client connected)."""
        ...

    def on_event(self, exchange: Exchange, event: EngineEvent) -> None: ...

    def on_text(self, connection: Connection, text: str) -> None: ...

    def on_reset(self) -> None: ...

    def refresh(self, tick: int) -> None:
        """Called every ``refresh_interval_s``; ``tick`` counts from 1."""
        ...


class StreamHub:
    """Every stream connection of the simulator, and the way messages reach them."""

    def __init__(self, state: SimStateLike, settings: StreamSettings | None = None) -> None:
        self.state = state
        self.settings = settings or StreamSettings()
        self.connections: dict[str, set[Connection]] = defaultdict(set)
        self.binance = BinanceStreams(self)
        self.bybit = BybitStreams(self)
        self.protocols: dict[str, ExchangeStreams] = {"binance": self.binance, "bybit": self.bybit}
        self.counts: dict[str, dict[str, dict[str, int]]] = _new_counts()
        self._closing: set[asyncio.Task[bool]] = set()
        self._exchanges: Mapping[str, Exchange] = {}
        self._listening: set[str] = set()

    @property
    def listen_keys(self) -> ListenKeys:
        """Binance's listen keys, which its REST front end manages."""
        return self.binance.listen_keys

    # --- engine side ------------------------------------------------------------------

    def on_reset(self, exchanges: Mapping[str, Exchange]) -> None:
        """A reset made new exchanges: close every old connection; listen to the new
        exchanges once a stream client connects to them."""
        self._exchanges = exchanges
        self._listening = set()
        for connection in [c for group in self.connections.values() for c in group]:
            closing = connection.close(RESET_CLOSE_CODE, "simulator reset")
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        for protocol in self.protocols.values():
            protocol.on_reset()
        self.counts = _new_counts()

    def deliver(self, connection: Connection, text: str, symbol: str | None) -> None:
        """Queue one pushed message for one connection, as the fault plan says."""
        if not connection.open or connection.stalled:
            return
        counts = self.counts[connection.exchange][connection.stream]
        decision = self.state.faults.decide_stream(
            connection.exchange, connection.stream, symbol, connection.listen_key is not None
        )
        outcome = decision.outcome
        if outcome is not None:
            counts[outcome.kind] += 1
            if outcome.kind == "stream_disconnect":
                connection.cut()
            elif outcome.kind == "stream_stall":
                connection.stall()
            elif outcome.kind == "listen_key_expired" and connection.listen_key is not None:
                self.binance.listen_keys.expire(connection.listen_key)
            return  # stream_drop, and the message each of the others replaced
        if decision.delay_s:
            counts["stream_delay"] += 1
        counts["sent"] += 1
        connection.enqueue(text, decision.delay_s)

    def _listen(self, name: str) -> None:
        """Hear the engine's events from now on. Until a stream client connects, the
        engine publishes nothing, and REST requests pay nothing for the streams."""
        if name not in self._listening:
            self._listening.add(name)
            self._exchanges[name].listeners.append(_guarded(self.protocols[name]))

    def remove(self, connection: Connection) -> None:
        self.connections[connection.exchange].discard(connection)

    # --- WebSocket side ---------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Route a WebSocket handshake by path: ``/<exchange>/<stream path>``."""
        _, _, rest = request.path.partition("/")
        name, _, path = rest.partition("/")
        protocol = self.protocols.get(name)
        route = protocol.route(f"/{path}") if protocol is not None else None
        if protocol is None or route is None:
            return web.json_response({"error": f"no stream at {request.path}"}, status=404)
        stream, on_connect = route
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        connection = Connection(self, request, ws, name, stream)
        self.connections[name].add(connection)
        self._listen(name)
        try:
            on_connect(connection)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    if connection.open:
                        _answer(protocol, connection, message.data)
                elif message.type == WSMsgType.PING:
                    if not connection.stalled:
                        await ws.pong(message.data)
                elif message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        except ConnectionError as exc:
            log.debug("stream client %s went away: %s", connection.id, exc)
        finally:
            connection.finished()
            transport = request.transport
            if not ws.closed and transport is not None and not transport.is_closing():
                await ws.close()
        return ws

    async def refresh_forever(self) -> None:
        """Tick the protocols' periodic pushes until cancelled."""
        for tick in itertools.count(1):
            await asyncio.sleep(self.settings.refresh_interval_s)
            for protocol in self.protocols.values():
                try:
                    protocol.refresh(tick)
                except Exception:
                    # One broken push must not end the refreshes of every stream.
                    log.exception("periodic stream push failed (%s)", protocol.name)

    def describe(self) -> dict[str, Any]:
        """``GET /_sim/streams``: connections, listen keys and message counts."""
        return {
            "connections": [
                connection.describe()
                for name in sorted(self.connections)
                for connection in sorted(self.connections[name], key=lambda c: c.connected_ms)
            ],
            "listenKeys": {"binance": self.binance.listen_keys.describe()},
            "messages": {
                name: {stream: dict(counts) for stream, counts in streams.items()}
                for name, streams in self.counts.items()
            },
        }


def _new_counts() -> dict[str, dict[str, dict[str, int]]]:
    return defaultdict(lambda: defaultdict(lambda: defaultdict(int)))


def _guarded(protocol: ExchangeStreams) -> Listener:
    """The protocol's engine listener, which must never fail the engine call (an order
    a REST client placed) because a stream message could not be made."""

    def listener(exchange: Exchange, event: EngineEvent) -> None:
        try:
            protocol.on_event(exchange, event)
        except Exception:
            log.exception("%s stream: could not push %s", protocol.name, type(event).__name__)

    return listener


def _answer(protocol: ExchangeStreams, connection: Connection, text: str) -> None:
    try:
        protocol.on_text(connection, text)
    except Exception:
        # A request the protocol code cannot handle is a simulator bug: log it and
        # keep the connection, as an exchange would keep serving.
        log.exception("%s stream: request failed: %.200s", protocol.name, text)


def create_stream_app(hub: StreamHub) -> web.Application:
    """The WebSocket port: ``/binance/...`` and ``/bybit/...`` (docs/simulator.md)."""
    app = web.Application()
    app.router.add_get("/{path:.*}", hub.handle)

    async def refresh(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(hub.refresh_forever())
        yield
        task.cancel()

    app.cleanup_ctx.append(refresh)
    return app


__all__ = ["ExchangeStreams", "StreamHub", "create_stream_app"]
