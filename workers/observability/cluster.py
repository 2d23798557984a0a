"""Cluster-wide gauges, read from Postgres and Redis when Prometheus scrapes a worker.

The counters in ``metrics`` say what one process did. An alert on a condition
that lasts (an order still ``unknown``, a cooldown still on, a queue still
growing, a stream gone quiet) needs the present state, which only the shared
stores hold. ``ClusterStateCollector`` reads it with one SQL statement and one
Redis pipeline, at most once per ``fresh_s`` whatever the number of scrapes:

=====================================  =======  =================  ==========================
name                                   type     labels             source
=====================================  =======  =================  ==========================
execq_orders_in_state                  gauge    status             Postgres (unfinished only)
execq_oldest_order_age_seconds         gauge    status             Postgres
execq_aged_positions_close_failing     gauge                       Postgres
execq_aged_positions_unclosable        gauge                       Postgres
execq_rate_limit_cooldown_seconds      gauge    exchange           Redis
execq_queue_length                     gauge    queue              Redis (the broker's lists)
execq_stream_age_seconds               gauge    account, stream    Redis (``record_stream_alive``)
execq_stream_reconnects_total          counter  account, stream    Redis (the stream holder's count)
execq_collector_errors_total           counter  source             this collector
=====================================  =======  =================  ==========================

Every worker's endpoint serves the same values (they are the cluster's, not the
worker's), so queries aggregate them with ``max``.

A scrape never waits long for a store: each source is read in a thread of its
own, and a scrape waits at most ``wait_s`` for it. Past that it is served the
last values read, as long as they are younger than ``max_age_s``; older ones
are left out rather than shown as current. A read that fails adds one to
``execq_collector_errors_total{source}`` and leaves that source's gauges out,
so a dashboard shows a gap and the error count, never a stale zero.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import redis
import redis.exceptions
import sqlalchemy.exc
from kombu.transport.redis import PRIORITY_STEPS as KOMBU_PRIORITY_STEPS
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine

from workers import redis_keys
from workers.store.monitoring import StoredState, read_stored_state
from workers.streams.health import per_stream, stream_ages

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds. Prometheus scrapes every 15 s by default; a few workers scraped in the
# same second share one read.
DEFAULT_FRESH_S = 5.0
# Seconds a scrape waits for a read before it is served the previous values: well
# inside Prometheus' default 10 s scrape timeout, so a slow store never makes a
# healthy worker look down.
DEFAULT_WAIT_S = 2.0
# Seconds after which values that could not be read again are left out.
DEFAULT_MAX_AGE_S = 60.0
# The Redis transport's priority steps unless broker_transport_options sets others.
DEFAULT_PRIORITY_STEPS = tuple(KOMBU_PRIORITY_STEPS)
# A stream holder writes its stream's liveness at most this often.
STREAM_ALIVE_WRITE_INTERVAL_S = 1.0


class _CachedRead(Generic[T]):
    """One source read in a background thread, its last result kept for later scrapes."""

    def __init__(
        self,
        source: str,
        read: Callable[[], T],
        errors: tuple[type[BaseException], ...],
        fresh_s: float,
        wait_s: float,
        max_age_s: float,
    ) -> None:
        self.source = source
        self._read = read
        self._errors = errors
        self._fresh_s = fresh_s
        self._wait_s = wait_s
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._value: T | None = None
        self._read_at: float | None = None
        # A failed read is not retried sooner than a successful one is repeated.
        self._attempted_at: float | None = None
        self._thread: threading.Thread | None = None
        self._failing = False
        self.error_count = 0

    def get(self) -> T | None:
        """The latest value, read again when the last attempt is older than ``fresh_s``;
        None when no value younger than ``max_age_s`` exists."""
        with self._lock:
            now = time.monotonic()
            due = self._attempted_at is None or now - self._attempted_at >= self._fresh_s
            if due and self._thread is None:
                self._attempted_at = now
                self._thread = threading.Thread(
                    target=self._refresh, name=f"execq-metrics-{self.source}", daemon=True
                )
                self._thread.start()
            thread = self._thread
        if thread is not None:
            thread.join(self._wait_s)
        with self._lock:
            if self._read_at is None or time.monotonic() - self._read_at > self._max_age_s:
                return None
            return self._value

    def _refresh(self) -> None:
        try:
            value = self._read()
        except self._errors as exc:
            with self._lock:
                self.error_count += 1
                first = not self._failing
                self._failing = True
            if first:
                log.warning("metrics: cannot read %s: %s", self.source, exc)
        else:
            with self._lock:
                self._value, self._read_at = value, time.monotonic()
                recovered = self._failing
                self._failing = False
            if recovered:
                log.info("metrics: %s readable again", self.source)
        finally:
            # Whatever happened, the next due scrape may start a read again.
            with self._lock:
                self._thread = None


@dataclass(frozen=True)
class RedisState:
    cooldown_s: dict[str, float]
    queue_length: dict[str, int]
    stream_age_s: dict[tuple[str, str], float]
    stream_reconnects: dict[tuple[str, str], int]


class ClusterStateCollector:
    """A Prometheus collector of the gauges in this module's docstring.

    ``engine`` and ``redis_client`` default to the process's own (``DATABASE_URL``,
    ``REDIS_URL``); ``queues`` are the Celery queues whose backlog is reported.
    """

    def __init__(
        self,
        queues: Sequence[str] = ("celery",),
        *,
        priority_steps: Sequence[int] = DEFAULT_PRIORITY_STEPS,
        key_prefix: str = "",
        engine: Engine | None = None,
        redis_client: redis.Redis | None = None,
        fresh_s: float = DEFAULT_FRESH_S,
        wait_s: float = DEFAULT_WAIT_S,
        max_age_s: float = DEFAULT_MAX_AGE_S,
    ) -> None:
        self._queues = tuple(dict.fromkeys(queues))
        self._priority_steps = tuple(priority_steps)
        self._key_prefix = key_prefix
        self._engine = engine
        self._redis_client = redis_client
        self._postgres = _CachedRead(
            "postgres",
            self._read_postgres,
            (sqlalchemy.exc.SQLAlchemyError,),
            fresh_s,
            wait_s,
            max_age_s,
        )
        self._redis = _CachedRead(
            "redis",
            self._read_redis,
            (redis.exceptions.RedisError,),
            fresh_s,
            wait_s,
            max_age_s,
        )

    # --- reads ---------------------------------------------------------------------------

    def _read_postgres(self) -> StoredState:
        from workers.settings import get_settings
        from workers.store.db import get_engine

        engine = self._engine or get_engine()
        return read_stored_state(engine, get_settings().aged.failures_before_alert)

    def _read_redis(self) -> RedisState:
        from workers.redis_client import get_redis
        from workers.settings import get_settings

        client = self._redis_client or get_redis()
        accounts = [account.name for account in get_settings().accounts]
        queue_lists = {
            queue: redis_keys.celery_queue_lists(queue, self._priority_steps, self._key_prefix)
            for queue in self._queues
        }
        with client.pipeline(transaction=False) as pipe:
            for account in accounts:
                pipe.pttl(redis_keys.rate_limit_cooldown(account))
            for lists in queue_lists.values():
                for name in lists:
                    pipe.llen(name)
            pipe.hgetall(redis_keys.STREAMS_LAST_ALIVE)
            pipe.hgetall(redis_keys.STREAMS_RECONNECTS)
            replies = pipe.execute()
        now_s = time.time()
        cooldowns, replies = replies[: len(accounts)], replies[len(accounts) :]
        queue_length: dict[str, int] = {}
        for queue, lists in queue_lists.items():
            queue_length[queue] = sum(int(length) for length in replies[: len(lists)])
            replies = replies[len(lists) :]
        # An account no longer configured has no holder: its last entries are history.
        configured = set(accounts)
        stream_age_s = {
            key: age_s
            for key, age_s in stream_ages(replies[0], now_s).items()
            if key[0] in configured
        }
        stream_reconnects = {
            key: int(count) for key, count in per_stream(replies[1]).items() if key[0] in configured
        }
        return RedisState(
            # PTTL is -2 without the key, -1 without expiry (never written so by execq).
            cooldown_s={
                account: max(0, int(pttl)) / 1000.0
                for account, pttl in zip(accounts, cooldowns, strict=True)
            },
            queue_length=queue_length,
            stream_age_s=stream_age_s,
            stream_reconnects=stream_reconnects,
        )

    # --- the collector protocol ----------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        stored = self._postgres.get()
        if stored is not None:
            yield from _stored_state_metrics(stored)
        shared = self._redis.get()
        if shared is not None:
            yield from _redis_state_metrics(shared)
        errors = CounterMetricFamily(
            "execq_collector_errors",
            "Reads of cluster state for these metrics that failed, by source (postgres, redis).",
            labels=["source"],
        )
        for source in (self._postgres, self._redis):
            errors.add_metric([source.source], source.error_count)
        yield errors


def _stored_state_metrics(stored: StoredState) -> Iterator[Metric]:
    in_state = GaugeMetricFamily(
        "execq_orders_in_state",
        "Orders not finished yet, by status (intent, submitting, unknown, open, partially_filled).",
        labels=["status"],
    )
    oldest = GaugeMetricFamily(
        "execq_oldest_order_age_seconds",
        "Seconds since the oldest order now in this status was created (0 when none is).",
        labels=["status"],
    )
    for status, orders in sorted(stored.orders.items()):
        in_state.add_metric([status], orders.count)
        oldest.add_metric([status], orders.oldest_age_s)
    yield in_state
    yield oldest
    yield GaugeMetricFamily(
        "execq_aged_positions_close_failing",
        "Open aged positions whose consecutive close failures reached the alert threshold.",
        value=stored.aged_close_failing,
    )
    yield GaugeMetricFamily(
        "execq_aged_positions_unclosable",
        "Open aged positions below the market's minimum order size: a person must close them.",
        value=stored.aged_unclosable,
    )


def _redis_state_metrics(shared: RedisState) -> Iterator[Metric]:
    cooldown = GaugeMetricFamily(
        "execq_rate_limit_cooldown_seconds",
        "Seconds left of the cluster-wide cooldown after a 429/418, per account (0 when none).",
        labels=["exchange"],
    )
    for account, seconds in sorted(shared.cooldown_s.items()):
        cooldown.add_metric([account], seconds)
    yield cooldown
    queue = GaugeMetricFamily(
        "execq_queue_length",
        "Task messages waiting in the broker, per Celery queue (all priority steps).",
        labels=["queue"],
    )
    for name, length in sorted(shared.queue_length.items()):
        queue.add_metric([name], length)
    yield queue
    streams = GaugeMetricFamily(
        "execq_stream_age_seconds",
        "Seconds since a WebSocket stream last showed it was alive (a message or a heartbeat).",
        labels=["account", "stream"],
    )
    for (account, stream), seconds in sorted(shared.stream_age_s.items()):
        streams.add_metric([account, stream], seconds)
    yield streams
    reconnects = CounterMetricFamily(
        "execq_stream_reconnects",
        "Reconnects of a WebSocket stream by its holder (a loss, a stale socket, an expired "
        "listen key), since the cluster's Redis was new.",
        labels=["account", "stream"],
    )
    for (account, stream), count in sorted(shared.stream_reconnects.items()):
        reconnects.add_metric([account, stream], count)
    yield reconnects


# --- what a stream holder calls ---------------------------------------------------------

_last_written: dict[tuple[str, str], float] = {}
_last_written_lock = threading.Lock()


def record_stream_alive(account: str, stream: str, client: redis.Redis | None = None) -> None:
    """Note that ``stream`` of ``account`` just delivered a message or a heartbeat.

    The stream holder calls this on every message; Redis is written at most once
    per ``STREAM_ALIVE_WRITE_INTERVAL_S`` per stream. Because the time lives in
    Redis, a holder that dies or hangs shows as a growing age on every worker's
    endpoint, which is what the ``stream_stale`` alert watches.
    """
    now_s = time.time()
    key = (account, stream)
    with _last_written_lock:
        if now_s - _last_written.get(key, 0.0) < STREAM_ALIVE_WRITE_INTERVAL_S:
            return
        _last_written[key] = now_s
    if client is None:
        from workers.redis_client import get_redis

        client = get_redis()
    client.hset(redis_keys.STREAMS_LAST_ALIVE, redis_keys.stream_field(account, stream), now_s)


def forget_stream(account: str, stream: str, client: redis.Redis | None = None) -> None:
    """Stop reporting ``stream`` (it was closed on purpose, not lost)."""
    with _last_written_lock:
        _last_written.pop((account, stream), None)
    if client is None:
        from workers.redis_client import get_redis

        client = get_redis()
    client.hdel(redis_keys.STREAMS_LAST_ALIVE, redis_keys.stream_field(account, stream))
