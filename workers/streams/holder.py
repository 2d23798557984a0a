"""The stream holder (``execq streams``): one asyncio process consuming the exchanges' streams.

For each account whose exchange has streams (``workers.streams.clients``) the holder
takes the account's lease (``redis_keys.stream_lease``, ``streams.lease_ttl_s``,
renewed every third of it). One holder per account across the cluster: another
process stands by, retries every third of the lifetime and takes over when the
holder dies; a holder that loses the lease closes that account's streams at once.

Per held account two *links*, each its own ccxt.pro client and socket(s):

- **private** (streams ``orders`` and ``positions``): ``watch_orders`` -> each order
  to ``workers.flows.stream_updates.apply_order_update``; ``watch_positions`` -> the
  venue's ``parse_position`` -> ``workers.exchange.positions.cache_positions``.
- **public** (stream ``prices``): ``watch_tickers`` for the symbols of the account's
  held positions and aged episodes (re-read every ``streams.targets_refresh_s``);
  each price -> ``cache_prices``, and a price that reaches an aged target ->
  ``workers.flows.aged_sweep.close_on_pushed_price``. With nothing to watch the link
  is ``idle`` (no socket, no age reported).

A link that fails (any ccxt error from a watch, a ``listenKeyExpired``, a stale
socket, an error applying an update) is closed and built again after a backoff;
each such reconnect counts in ``STREAMS_RECONNECTS``. **After every (re)connect of
the private link, before it counts as live, the account is reconciled by REST**
(``workers.flows.stream_updates.reconcile_account``): exchanges never replay what
happened during a gap. The reconciliation starts once the exchange has taken the
subscriptions (``StreamVenue.private_subscribed``), so whatever it does not see reaches
the stream. Updates that arrive while it reconciles are applied (they are idempotent)
but the stream is not reported alive until the reconciliation is done. The public link
is not reconciled: a price missed during its gap is the aged sweep's, the safety net
that still runs on its interval.

Liveness, stale spells and the backoff schedule are the pure rules of
``workers.execution.streams``. Each stream's state (``connecting``, ``reconciling``,
``live``, ``stale``, ``reconnecting``, ``idle``, ``unsupported``) is written to
``STREAMS_STATE`` with its start, a detail and the holder's id
(``<host>:<pid>``); ``record_stream_alive`` is called for every message and, while
the socket answers its pings, every second, which is what consumers read
(``workers.streams.health``). Blocking work (Redis, Postgres, the flows) runs in
threads (``asyncio.to_thread``), never on the event loop. A Redis or Postgres failure
costs a state write, a count or an alert (logged), or a reconnect of the link whose
update could not be applied, never the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import ccxt.pro as ccxtpro
import redis
from sqlalchemy.exc import SQLAlchemyError

from workers import redis_keys
from workers.coordination import Lock, try_lock
from workers.exchange import gateway
from workers.exchange.positions import cache_positions
from workers.exchange.prices import cache_prices
from workers.exchange.venues.base import ExchangeOrder, ExchangePosition, HedgeModeUnsupported
from workers.execution import streams as rules
from workers.observability.cluster import forget_stream, record_stream_alive
from workers.redis_client import get_redis
from workers.settings import ExchangeAccount, Settings
from workers.streams import clients
from workers.streams.health import ORDERS, POSITIONS, PRICES, STREAMS

log = logging.getLogger("execq.streams")

T = TypeVar("T")

# Seconds between two looks at a link's socket: often enough that a stale verdict
# comes within a second of the stale window, and that liveness is written every second.
MAX_TICK_S = 1.0


class StreamStale(Exception):
    """A link's socket delivered nothing, pings answered included, for ``stale_after_s``."""


class LeaseLost(Exception):
    """Another process holds the account's lease now (this one could not renew it)."""


def holder_id() -> str:
    """This process's name in ``STREAMS_STATE``: ``<host>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def pause(seconds: float) -> None:
    """Every wait of the holder: its timers (ticks, lease renewals, refreshes) and the
    reconnect backoff of ``workers.execution.streams``. A process of its own, it holds no
    worker thread and has no task deadline, so it waits here rather than through the
    workers' retry executor (``workers.retrying``); a stop cancels any wait at once."""
    await asyncio.sleep(seconds)


def _tick_s(settings: Settings) -> float:
    return min(MAX_TICK_S, settings.streams.stale_after_s / 4)


# --- what the holder writes to Redis ---------------------------------------------------


_FORGET_OWN_ROWS = """
for i = 2, #ARGV do
    local row = redis.call('HGET', KEYS[1], ARGV[i])
    if row and cjson.decode(row)['holder'] == ARGV[1] then
        redis.call('HDEL', KEYS[1], ARGV[i])
    end
end
return 0
"""


class StateBoard:
    """One account's rows of ``STREAMS_STATE`` as this holder writes them."""

    def __init__(self, account: str, holder: str) -> None:
        self.account = account
        self.holder = holder
        self._written: dict[str, tuple[str, str, str]] = {}

    async def set(self, streams: Iterable[str], state: str, detail: str = "") -> None:
        """Write the streams' state (only what changed). The state is for people and
        ``Stack.start_streams``; a Redis failure is logged, and the next change retries."""
        now = datetime.now(UTC).isoformat()
        rows: dict[str, str] = {}
        written: dict[str, tuple[str, str, str]] = {}
        for stream in streams:
            previous = self._written.get(stream)
            if previous is not None and previous[:2] == (state, detail):
                continue
            since = previous[2] if previous is not None and previous[0] == state else now
            written[stream] = (state, detail, since)
            rows[redis_keys.stream_field(self.account, stream)] = json.dumps(
                {"state": state, "since": since, "detail": detail, "holder": self.holder}
            )
        if not rows:
            return
        log.info("%s %s: %s %s", self.account, ",".join(streams), state, detail)
        try:
            await asyncio.to_thread(get_redis().hset, redis_keys.STREAMS_STATE, mapping=rows)
        except redis.RedisError as exc:
            log.warning("%s: stream state not written: %s", self.account, exc)
            return
        self._written.update(written)

    async def forget_own(self) -> None:
        """Remove the rows this holder wrote and nobody has overwritten since (the lease was
        lost: the new holder's rows stay)."""
        self._written.clear()
        fields = [redis_keys.stream_field(self.account, stream) for stream in STREAMS]
        try:
            await asyncio.to_thread(
                get_redis().eval,
                _FORGET_OWN_ROWS,
                1,
                redis_keys.STREAMS_STATE,
                self.holder,
                *fields,
            )
        except redis.RedisError as exc:
            log.warning("%s: stream state not cleared: %s", self.account, exc)

    async def clear(self) -> None:
        """Remove this account's rows and ages (its streams were closed on purpose)."""
        self._written.clear()
        fields = [redis_keys.stream_field(self.account, stream) for stream in STREAMS]
        try:
            await asyncio.to_thread(get_redis().hdel, redis_keys.STREAMS_STATE, *fields)
            for stream in STREAMS:
                await asyncio.to_thread(forget_stream, self.account, stream)
        except redis.RedisError as exc:
            log.warning("%s: stream state not cleared: %s", self.account, exc)


async def _count_reconnect(account: str, streams: Iterable[str]) -> None:
    def count() -> None:
        pipe = get_redis().pipeline(transaction=False)
        for stream in streams:
            pipe.hincrby(redis_keys.STREAMS_RECONNECTS, redis_keys.stream_field(account, stream))
        pipe.execute()

    try:
        await asyncio.to_thread(count)
    except redis.RedisError as exc:
        log.warning("%s: reconnect not counted: %s", account, exc)


def _raise_stale_alert(account: str, streams: Sequence[str], detail: str) -> None:
    from workers.store.db import session_scope
    from workers.store.events import raise_alert

    with session_scope() as session:
        raise_alert(
            session,
            "stream_stale",
            f"{account} {'/'.join(streams)} stream stale ({detail}); polling the exchange "
            "until it is live again",
            severity="warning",
            account=account,
            payload={"streams": list(streams), "detail": detail},
        )


# --- the symbols and targets a price stream watches ------------------------------------


@dataclass
class Watchlist:
    """What one account's price stream watches: symbols, and aged targets by symbol."""

    symbols: tuple[str, ...] = ()
    targets: dict[str, list[Any]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def update(self, symbols: tuple[str, ...], targets: dict[str, list[Any]]) -> None:
        self.targets = targets
        if symbols != self.symbols:
            self.symbols = symbols
            self.changed.set()


def read_watchlists(accounts: Iterable[str]) -> dict[str, tuple[tuple[str, ...], dict]]:
    """Per account: the symbols to watch and the aged targets by symbol (Postgres)."""
    from workers.flows.aged_sweep import aged_targets
    from workers.store.reports import open_positions

    wanted = set(accounts)
    targets: dict[str, dict[str, list[Any]]] = {account: {} for account in wanted}
    for (account, symbol), found in aged_targets().items():
        if account in wanted:
            targets[account].setdefault(symbol, []).extend(found)
    held: dict[str, set[str]] = {account: set() for account in wanted}
    for position in open_positions():
        if position["account"] in wanted:
            held[position["account"]].add(position["symbol"])
    return {
        account: (rules.watched_symbols(held[account], targets[account]), targets[account])
        for account in wanted
    }


# --- links ------------------------------------------------------------------------------


async def watched(
    watch: Callable[[], Awaitable[T]], until: asyncio.Event | None = None
) -> AsyncIterator[T]:
    """What successive ``watch()`` calls return, with a call always pending; ends when
    ``until`` is set.

    A ccxt.pro watch call resolves on the next message only: a message that arrives
    while nobody waits reaches ccxt's cache but no caller until another message comes.
    So the next call is made as soon as one returns (the results queue up here), never
    after the caller is done with the result. A watch's error ends the iteration with it.
    """
    results: asyncio.Queue[T | BaseException] = asyncio.Queue()

    async def keep_watching() -> None:
        try:
            while True:
                results.put_nowait(await watch())
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            results.put_nowait(exc)

    watcher = asyncio.create_task(keep_watching())
    stopper = asyncio.create_task((until or asyncio.Event()).wait())
    try:
        while True:
            getter = asyncio.create_task(results.get())
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                return
            result = getter.result()
            if isinstance(result, BaseException):
                raise result
            yield result
    finally:
        watcher.cancel()
        stopper.cancel()
        await asyncio.gather(watcher, stopper, return_exceptions=True)


class Link:
    """One ccxt.pro client of one account and the streams it carries; reconnects forever."""

    name = "link"
    streams: tuple[str, ...] = ()

    def __init__(
        self,
        account: ExchangeAccount,
        settings: Settings,
        board: StateBoard,
        venue: clients.StreamVenue,
    ) -> None:
        self.account = account
        self.settings = settings
        self.board = board
        self.venue = venue
        self.attempt = 0
        self.live_since_s: float | None = None
        self.last_evidence_s = time.time()
        self.in_spell = False
        # False while the link has nothing to watch: no socket is wanted, so none is missed.
        self.active = False
        # Loaded by the first client; every later one of this link starts from them, so a
        # reconnect costs no markets request.
        self.markets: dict[str, Any] | None = None

    # hooks ---------------------------------------------------------------------------

    async def wait_for_work(self) -> None:
        """Return when the link has something to watch."""

    def loops(self, client: ccxtpro.Exchange) -> list[Awaitable[None]]:
        raise NotImplementedError

    def subscribed(self, client: ccxtpro.Exchange) -> bool:
        """Whether the exchange has taken the subscriptions: a socket is open and answered."""
        return clients.socket_open(client) and clients.last_frame_s(client) is not None

    async def after_connect(self) -> None:
        """What must happen before the link counts as live."""

    # the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        spells = asyncio.create_task(self._watch_spells())
        first = True
        try:
            while True:
                await self.wait_for_work()
                self.active = True
                try:
                    await self._session(first)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure means: reconnect
                    await self._lost(exc)
                    first = False
                else:
                    first = True  # closed on purpose (nothing to watch)
        finally:
            spells.cancel()

    async def _lost(self, exc: BaseException) -> None:
        reason = _reason(exc)
        if isinstance(exc, StreamStale):
            await self._begin_spell(reason)
        elif _expected(exc):
            log.warning("%s %s lost: %s", self.account.name, self.name, reason)
        else:
            log.error("%s %s failed: %s", self.account.name, self.name, reason, exc_info=exc)
        live_for = None if self.live_since_s is None else time.time() - self.live_since_s
        self.live_since_s = None
        self.attempt = rules.next_attempt(
            self.attempt, live_for, self.settings.streams.stale_after_s
        )
        delay_s = rules.reconnect_delay_s(
            self.attempt,
            self.settings.streams.reconnect_base_s,
            self.settings.streams.reconnect_cap_s,
            random.random(),
        )
        state = rules.STALE if self.in_spell else rules.RECONNECTING
        # The state first: whoever sees the count sees the stream no longer live.
        await self.board.set(
            self.streams, state, f"{reason}; reconnect {self.attempt} in {delay_s:.1f}s"
        )
        await _count_reconnect(self.account.name, self.streams)
        await pause(delay_s)

    async def _session(self, first: bool) -> None:
        await self.board.set(
            self.streams,
            rules.CONNECTING if first else rules.RECONNECTING,
            "" if first else f"reconnect {self.attempt}",
        )
        client = clients.build_stream_client(self.account, self.settings)
        tasks: list[asyncio.Task[None]] = []
        try:
            if self.markets is None:
                self.markets = await client.load_markets()
            else:
                client.set_markets(self.markets)
            tasks = [asyncio.create_task(loop) for loop in self.loops(client)]
            tasks.append(asyncio.create_task(self._supervise(client)))
            await self._until_subscribed(client, tasks)
            await self.board.set(self.streams, rules.RECONCILING)
            await self.after_connect()
            self.live_since_s = self.last_evidence_s = time.time()
            self.in_spell = False
            await self.board.set(self.streams, rules.LIVE)
            for stream in self.streams:
                await self.alive(stream)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await clients.close_stream_client(client)

    async def _until_subscribed(
        self, client: ccxtpro.Exchange, tasks: list[asyncio.Task[None]]
    ) -> None:
        deadline_s = time.monotonic() + self.settings.streams.stale_after_s
        while not self.subscribed(client):
            for task in tasks:
                if task.done():
                    task.result()
                    return  # a loop that ended on purpose (nothing left to watch)
            if time.monotonic() > deadline_s:
                raise StreamStale(f"not connected within {self.settings.streams.stale_after_s:g}s")
            await pause(0.02)

    async def _supervise(self, client: ccxtpro.Exchange) -> None:
        stale_after_s = self.settings.streams.stale_after_s
        while True:
            await pause(_tick_s(self.settings))
            if self.venue.expired(client):
                raise clients.ListenKeyExpired("listen key expired")
            last_frame_s = clients.last_frame_s(client)
            if last_frame_s is None:
                continue  # not connected yet, or closing: the watch calls say why
            now_s = time.time()
            if not rules.is_alive(now_s, last_frame_s, stale_after_s):
                raise StreamStale(f"no frame for {now_s - last_frame_s:.1f}s")
            self.last_evidence_s = max(self.last_evidence_s, last_frame_s)
            for stream in self.streams:
                await self.alive(stream)

    async def _watch_spells(self) -> None:
        """Begin a stale spell when no evidence of life came for the stale window, also
        while no socket is open (reconnects failing)."""
        while True:
            await pause(_tick_s(self.settings))
            if self.active and rules.stale_spell_begins(
                time.time(),
                self.last_evidence_s,
                self.settings.streams.stale_after_s,
                self.in_spell,
            ):
                await self._begin_spell(
                    f"no sign of life for {time.time() - self.last_evidence_s:.1f}s"
                )

    async def _begin_spell(self, detail: str) -> None:
        if self.in_spell:
            return
        self.in_spell = True
        await self.board.set(self.streams, rules.STALE, detail)
        log.warning("%s %s stale: %s", self.account.name, "/".join(self.streams), detail)
        try:
            await asyncio.to_thread(_raise_stale_alert, self.account.name, self.streams, detail)
        except SQLAlchemyError as exc:
            log.error("%s: stream_stale alert not recorded: %s", self.account.name, exc)

    async def alive(self, stream: str) -> None:
        """Note a sign of life on ``stream``, once the link is live."""
        if self.live_since_s is not None:
            await asyncio.to_thread(record_stream_alive, self.account.name, stream)


class PrivateLink(Link):
    """Orders and positions, reconciled by REST after every (re)connect."""

    name = "private"
    streams = (ORDERS, POSITIONS)

    def loops(self, client: ccxtpro.Exchange) -> list[Awaitable[None]]:
        loops = [self._orders(client), self._positions(client)]
        if self.venue.renew_every_s is not None:
            loops.append(self._renew_credentials(client, self.venue.renew_every_s))
        return loops

    async def _renew_credentials(self, client: ccxtpro.Exchange, every_s: float) -> None:
        while True:
            await pause(every_s)
            await self.venue.renew(client)

    def subscribed(self, client: ccxtpro.Exchange) -> bool:
        # Two topics: orders and positions.
        return self.venue.private_subscribed(client, topics=2)

    async def after_connect(self) -> None:
        from workers.flows.stream_updates import reconcile_account

        outcomes = await asyncio.to_thread(reconcile_account, self.account.name, self.settings)
        log.info("%s reconciled after connect: %s", self.account.name, outcomes)

    async def _orders(self, client: ccxtpro.Exchange) -> None:
        from workers.flows.stream_updates import apply_order_update

        async for orders in watched(client.watch_orders):
            await self.alive(ORDERS)
            for raw in orders:
                seen = ExchangeOrder.from_ccxt(raw)
                outcome = await asyncio.to_thread(
                    apply_order_update, self.account.name, seen, self.settings
                )
                log.info(
                    "%s order %s %s filled %s: %s",
                    self.account.name,
                    seen.client_order_id,
                    seen.status,
                    seen.filled,
                    outcome,
                )

    async def _positions(self, client: ccxtpro.Exchange) -> None:
        venue = gateway.venue(self.account.name)
        async for raws in watched(client.watch_positions):
            await self.alive(POSITIONS)
            positions: list[ExchangePosition] = []
            for raw in raws:
                try:
                    positions.append(venue.parse_position(raw))
                except HedgeModeUnsupported as exc:
                    log.warning("%s", exc)
            if positions:
                await asyncio.to_thread(cache_positions, positions)


class PublicLink(Link):
    """Prices of the account's watched symbols, and closes when they reach aged targets."""

    name = "public"
    streams = (PRICES,)

    def __init__(self, *args: Any, watchlist: Watchlist, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watchlist = watchlist
        self.gate = rules.TriggerGate(retry_after_s=self.settings.streams.targets_refresh_s)
        self.asked_s: dict[int, float] = {}

    async def wait_for_work(self) -> None:
        if self.watchlist.symbols:
            return
        self.active = False
        self.live_since_s = None
        self.in_spell = False
        await self.board.set(self.streams, rules.IDLE, "no position or aged target to watch")
        await asyncio.to_thread(forget_stream, self.account.name, PRICES)
        while not self.watchlist.symbols:
            self.watchlist.changed.clear()
            await self.watchlist.changed.wait()
        self.last_evidence_s = time.time()

    def loops(self, client: ccxtpro.Exchange) -> list[Awaitable[None]]:
        return [self._prices(client)]

    async def _prices(self, client: ccxtpro.Exchange) -> None:
        while True:
            symbols = self.watchlist.symbols
            if not symbols:
                return  # nothing left to watch: the link goes idle
            self.watchlist.changed.clear()
            tickers_seen = watched(
                lambda s=symbols: client.watch_tickers(list(s)), until=self.watchlist.changed
            )
            async for tickers in tickers_seen:
                await self._on_tickers(symbols, tickers)

    async def _on_tickers(self, symbols: tuple[str, ...], tickers: dict[str, Any]) -> None:
        await self.alive(PRICES)
        prices: dict[str, Decimal] = {}
        observed_at: dict[str, datetime] = {}
        for symbol, ticker in tickers.items():
            last = ticker.get("last") or ticker.get("close")
            if last is None or symbol not in symbols:
                continue
            prices[symbol] = Decimal(str(last))
            stamp_ms = ticker.get("timestamp")
            observed_at[symbol] = (
                datetime.fromtimestamp(stamp_ms / 1000, UTC) if stamp_ms else datetime.now(UTC)
            )
        if prices:
            await asyncio.to_thread(
                cache_prices, {(self.account.name, s): p for s, p in prices.items()}
            )
            await self._close_reached(prices, observed_at)

    async def _close_reached(
        self, prices: dict[str, Decimal], observed_at: dict[str, datetime]
    ) -> None:
        for symbol, price in prices.items():
            reached = rules.reached_targets(self.watchlist.targets.get(symbol, ()), price)
            now_s = time.monotonic()
            due = self.gate.due(reached, self.asked_s, now_s)
            if not due:
                continue
            for aged_id in due:
                self.asked_s[aged_id] = now_s
            from workers.flows.aged_sweep import close_on_pushed_price

            claimed = await asyncio.to_thread(
                close_on_pushed_price,
                self.account.name,
                symbol,
                price,
                observed_at[symbol],
                self.settings,
            )
            log.info(
                "%s %s at %s reached aged targets %s: close claimed for %s",
                self.account.name,
                symbol,
                price,
                list(due),
                claimed,
            )


# A Binance listen key (64 characters, in a user data stream's URL) lets anyone read the
# account's stream: it never goes into a state, an alert or a log line.
_LISTEN_KEY = re.compile(r"[A-Za-z0-9]{48,}")


def _reason(exc: BaseException) -> str:
    """What a state's detail and the log say about a failure (listen keys masked)."""
    if isinstance(exc, clients.ListenKeyExpired):
        return "listen_key_expired"
    if isinstance(exc, StreamStale):
        return f"stale: {exc}"
    return _LISTEN_KEY.sub("…", f"{type(exc).__name__}: {str(exc)[:300]}")


def _expected(exc: BaseException) -> bool:
    """Failures a stream is expected to meet now and then (logged without a traceback)."""
    import ccxt

    return isinstance(exc, ccxt.NetworkError | ccxt.ExchangeError | OSError)


# --- an account -------------------------------------------------------------------------


class AccountHolder:
    """Takes and keeps one account's lease and runs its links while it holds it."""

    def __init__(
        self,
        account: ExchangeAccount,
        settings: Settings,
        holder: str,
        venue: clients.StreamVenue,
        watchlist: Watchlist,
    ) -> None:
        self.account = account
        self.settings = settings
        self.venue = venue
        self.watchlist = watchlist
        self.board = StateBoard(account.name, holder)

    async def run(self) -> None:
        key = redis_keys.stream_lease(self.account.name)
        ttl_s = self.settings.streams.lease_ttl_s
        waiting_logged = False
        while True:
            try:
                lock = await asyncio.to_thread(try_lock, key, ttl_s)
            except redis.RedisError as exc:
                log.warning("%s: cannot ask for the lease: %s", self.account.name, exc)
                lock = None
            if lock is None:
                if not waiting_logged:
                    log.info("%s: another holder has the lease; standing by", self.account.name)
                    waiting_logged = True
                await pause(rules.lease_renew_interval_s(ttl_s))
                continue
            waiting_logged = False
            log.info("%s: lease taken", self.account.name)
            try:
                await self._hold(lock)
            except Exception as exc:  # noqa: BLE001 - the account is taken up again, not dropped
                log.error("%s: holding the streams failed", self.account.name, exc_info=exc)
                await pause(rules.lease_renew_interval_s(ttl_s))

    async def _hold(self, lock: Lock) -> None:
        private = PrivateLink(self.account, self.settings, self.board, self.venue)
        public = PublicLink(
            self.account, self.settings, self.board, self.venue, watchlist=self.watchlist
        )
        tasks = [
            asyncio.create_task(self._renew(lock)),
            asyncio.create_task(private.run()),
            asyncio.create_task(public.run()),
        ]
        lost = False
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        except LeaseLost:
            lost = True
            log.warning("%s: lease lost; its streams are closed", self.account.name)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if lost:
                await self.board.forget_own()
            else:
                # Stopped on purpose: hand the account over at once.
                await self.board.clear()
                try:
                    await asyncio.to_thread(lock.release)
                except redis.RedisError as exc:
                    log.warning("%s: lease not released: %s", self.account.name, exc)

    async def _renew(self, lock: Lock) -> None:
        ttl_s = self.settings.streams.lease_ttl_s
        while True:
            await pause(rules.lease_renew_interval_s(ttl_s))
            try:
                renewed = await asyncio.to_thread(lock.extend, ttl_s)
            except redis.RedisError as exc:
                if lock.remaining_ms() <= 0:
                    raise LeaseLost(str(exc)) from exc
                log.warning("%s: lease renewal failed: %s", self.account.name, exc)
                continue
            if not renewed:
                raise LeaseLost("taken by another holder")


# --- the process ------------------------------------------------------------------------


async def _refresh_watchlists(
    watchlists: dict[str, Watchlist], settings: Settings, read: Callable[..., dict]
) -> None:
    while True:
        try:
            found = await asyncio.to_thread(read, list(watchlists))
        except Exception as exc:  # noqa: BLE001 - the next refresh tries again; log says why
            log.warning("cannot read the symbols to watch: %s", exc)
        else:
            for account, (symbols, targets) in found.items():
                watchlists[account].update(symbols, targets)
        await pause(settings.streams.targets_refresh_s)


async def _refusal(account: ExchangeAccount, settings: Settings) -> str | None:
    """Why no stream client can be built for the account (a mode its exchange does not
    offer), or None. No I/O: the client is built and closed again."""
    try:
        client = clients.build_stream_client(account, settings)
    except gateway.GatewayError as exc:
        return str(exc)
    await clients.close_stream_client(client)
    return None


async def hold_streams(
    settings: Settings, account_names: Sequence[str], stop: asyncio.Event
) -> None:
    """Hold the streams of ``account_names`` (every configured account when empty) until
    ``stop`` is set; then close them, release the leases and clear their state."""
    holder = holder_id()
    accounts = [settings.account(name) for name in account_names] or list(settings.accounts)
    watchlists: dict[str, Watchlist] = {}
    holders: list[AccountHolder] = []
    for account in accounts:
        venue = clients.stream_venue(account)
        refused = (
            f"{account.ccxt_class} streams are not consumed"
            if venue is None
            else await _refusal(account, settings)
        )
        if venue is None or refused is not None:
            await StateBoard(account.name, holder).set(STREAMS, rules.UNSUPPORTED, refused)
            continue
        watchlists[account.name] = Watchlist()
        holders.append(AccountHolder(account, settings, holder, venue, watchlists[account.name]))
    log.info("stream holder %s for %s", holder, ", ".join(h.account.name for h in holders))
    tasks = [asyncio.create_task(h.run()) for h in holders]
    if watchlists:
        tasks.append(
            asyncio.create_task(_refresh_watchlists(watchlists, settings, read_watchlists))
        )
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in [*tasks, stopping]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("stream holder %s stopped", holder)


def run(settings: Settings, account_names: Sequence[str]) -> None:
    """Run the holder in the foreground until SIGTERM or SIGINT."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await hold_streams(settings, account_names, stop)

    asyncio.run(main())
