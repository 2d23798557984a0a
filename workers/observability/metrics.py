"""Prometheus metrics of an execq worker, and the endpoint that serves them.

The series names are part of the README (operators build dashboards on them):

=====================================  =========  ===================================
name                                   type       labels
=====================================  =========  ===================================
execq_orders_total                     counter    exchange, status
execq_order_attempts_total             counter    exchange, retry_class
execq_verifications_total              counter    exchange, verdict
execq_aged_positions                   gauge      phase
execq_close_latency_seconds            histogram  (price at target -> filled)
execq_sweep_duration_seconds           histogram  sweep
execq_rate_limit_wait_seconds_total    counter    exchange
execq_kill_switch                      gauge      (0 off, 1 on; read at scrape time)
execq_alerts_total                     counter    kind, severity
execq_exchange_requests_total          counter    exchange, operation
=====================================  =========  ===================================

A worker's endpoint also serves cluster-wide gauges read from Postgres and
Redis at scrape time (``workers.observability.cluster``).

Multiprocess: when ``PROMETHEUS_MULTIPROC_DIR`` is set *before this module is
imported* (prometheus_client picks its value store at import), every process
writes its samples to files there and the endpoint aggregates them, so a
prefork worker's children and several workers on one host can share one
endpoint. The directory must be emptied before the workers start (stale files
from an earlier run would be added in). Gauges use ``livemostrecent``: the
latest value any live process set, since the aged counts are cluster-wide
facts that whichever process looked last knows best.

``execq_kill_switch`` is not a value a process sets: the endpoint reads the
switch when it is scraped (``KillSwitchCollector``), so it shows the switch an
operator just turned on, whether or not this worker has read it since.

Tasks call the small helpers below (``observe_order_status`` ...), never the
metric objects, so label names and value conventions live in one place.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server

log = logging.getLogger(__name__)

_servers_lock = threading.Lock()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. The success criterion is "closed < 5 s after the target was
# reached", so the buckets are dense around 5 s and stop at 30 s.
CLOSE_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0)
# Seconds. A sweep is one DB query plus one fetch_tickers per exchange.
SWEEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The phases an aged position can be in; reported as 0 when none is in them,
# so a dashboard shows a drop to zero instead of a stale last value.
AGED_PHASES = ("grace", "progressive")

ORDERS = Counter(
    "execq_orders_total",
    "Order status transitions, by exchange and the status reached.",
    ["exchange", "status"],
)
ORDER_ATTEMPTS = Counter(
    "execq_order_attempts_total",
    "Exchange attempts of order submission, by the retry class of their outcome.",
    ["exchange", "retry_class"],
)
VERIFICATIONS = Counter(
    "execq_verifications_total",
    "Position verifications, by verdict.",
    ["exchange", "verdict"],
)
AGED_POSITIONS = Gauge(
    "execq_aged_positions",
    "Aged positions being tracked, by phase (set by the aged-phase sweep).",
    ["phase"],
    multiprocess_mode="livemostrecent",
)
CLOSE_LATENCY = Histogram(
    "execq_close_latency_seconds",
    "Seconds from the first observed price at or past an aged position's target "
    "to its close filled.",
    buckets=CLOSE_LATENCY_BUCKETS,
)
SWEEP_DURATION = Histogram(
    "execq_sweep_duration_seconds",
    "Seconds one run of a periodic sweep took.",
    ["sweep"],
    buckets=SWEEP_BUCKETS,
)
RATE_LIMIT_WAIT = Counter(
    "execq_rate_limit_wait_seconds_total",
    "Seconds spent waiting for the shared exchange rate limit or its cooldown.",
    ["exchange"],
)
ALERTS = Counter(
    "execq_alerts_total",
    "Alerts raised, by kind and severity.",
    ["kind", "severity"],
)
EXCHANGE_REQUESTS = Counter(
    "execq_exchange_requests_total",
    "Requests sent to exchanges, by operation (create_order, fetch_order, ...).",
    ["exchange", "operation"],
)


# Every alert kind execq raises, with its severity. A worker exposes each at 0 from
# its start: Prometheus' ``increase()`` sees no increase in a series that first
# appears already at 1, so an alert raised once by a fresh worker would be missed.
ALERT_KINDS: dict[str, str] = {
    "possible_orphaned_position": "critical",
    "signal_undelivered": "critical",
    "order_unknown": "critical",
    "aged_close_failing": "critical",
    "aged_position_unclosable": "critical",
    "position_exceeds_book": "critical",
    "account_auth_failed": "critical",
    "hedge_mode_unsupported": "critical",
    "stream_stale": "warning",
    "orphan_adopted": "warning",
    "verification_unknown": "warning",
}


def _label(value: object) -> str:
    """A label value: an enum's value (``OrderStatus.FILLED`` -> ``filled``), else ``str``."""
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


# --- helpers the tasks call -------------------------------------------------------------


def observe_order_status(exchange: str, status: object) -> None:
    """Count one transition of an order into ``status`` (call after the DB write commits)."""
    ORDERS.labels(exchange=_label(exchange), status=_label(status)).inc()


def observe_attempt(exchange: str, retry_class: object) -> None:
    """Count one create attempt; ``retry_class`` is its outcome's class (``ok`` for success)."""
    ORDER_ATTEMPTS.labels(exchange=_label(exchange), retry_class=_label(retry_class)).inc()


def observe_verdict(exchange: str, verdict: object) -> None:
    """Count one verification verdict (``confirmed``, ``absent``, ``size_mismatch`` ...)."""
    VERIFICATIONS.labels(exchange=_label(exchange), verdict=_label(verdict)).inc()


def set_aged_phase_counts(counts: Mapping[str, int]) -> None:
    """Set the number of aged positions per phase; known phases missing from ``counts`` -> 0."""
    phases = {_label(phase): int(count) for phase, count in counts.items()}
    for phase in AGED_PHASES:
        phases.setdefault(phase, 0)
    for phase, count in phases.items():
        AGED_POSITIONS.labels(phase=phase).set(count)


def observe_close_latency(seconds: float) -> None:
    """Record seconds from the first observed price at or past the target to the close's
    last fill (negative clock skew counts as 0)."""
    CLOSE_LATENCY.observe(max(0.0, float(seconds)))


@contextmanager
def time_sweep(name: str) -> Iterator[None]:
    """Time the block as one run of sweep ``name``; a sweep that raised is timed too."""
    started = time.perf_counter()
    try:
        yield
    finally:
        SWEEP_DURATION.labels(sweep=_label(name)).observe(time.perf_counter() - started)


def add_rate_limit_wait(exchange: str, seconds: float) -> None:
    """Add ``seconds`` waited for the shared rate limit (0 or less is ignored)."""
    if seconds > 0:
        RATE_LIMIT_WAIT.labels(exchange=_label(exchange)).inc(seconds)


def observe_alert(kind: str, severity: str) -> None:
    ALERTS.labels(kind=_label(kind), severity=_label(severity)).inc()


def observe_exchange_request(exchange: str, operation: str) -> None:
    EXCHANGE_REQUESTS.labels(exchange=_label(exchange), operation=_label(operation)).inc()


def expose_alert_kinds() -> None:
    """Expose every known alert kind at its current count (0 until one is raised here)."""
    for kind, severity in ALERT_KINDS.items():
        ALERTS.labels(kind=kind, severity=severity)


# --- the endpoint -----------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())


# A metric file starts with its used-bytes counter and padding.
_MMAP_HEADER_BYTES = 8


def _size_or_zero(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        # A dead process's live-gauge file, removed after the glob.
        return 0


class SettledFilesCollector(prometheus_multiprocess.MultiProcessCollector):
    """All processes' metric files, leaving out a file still being created.

    prometheus_client creates a process's ``.db`` file and sizes it in two
    steps; a scrape in between read 0 bytes, failed to unpack its header and
    answered the whole /metrics with a 500. A file too short for its header has
    nothing recorded yet, so leaving it out loses no sample.
    """

    def collect(self) -> Any:
        files = [
            path
            for path in glob.glob(os.path.join(self._path, "*.db"))
            if _size_or_zero(path) >= _MMAP_HEADER_BYTES
        ]
        return self.merge(files, accumulate=True)


class _ProcessMetrics:
    """This process's default registry, as one collector among others."""

    def collect(self) -> Any:
        return REGISTRY.collect()


KILL_SWITCH_HELP = "1 while the kill switch blocks new (non reduce-only) orders, else 0."


class KillSwitchCollector:
    """``execq_kill_switch``, read from the cluster's kill switch at each scrape.

    One Redis GET (Postgres when Redis lost the switch). When neither answers the
    series is left out of the scrape, which alerting sees as absent, rather than
    reporting a state nobody read.
    """

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("execq_kill_switch", KILL_SWITCH_HELP)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import redis
        import sqlalchemy.exc

        from workers.coordination import kill_switch_state

        try:
            state = kill_switch_state()
        except (redis.RedisError, sqlalchemy.exc.SQLAlchemyError) as exc:
            log.warning("execq_kill_switch left out of the scrape: %s", exc)
            return
        yield GaugeMetricFamily("execq_kill_switch", KILL_SWITCH_HELP, value=1 if state.on else 0)


_KILL_SWITCH_COLLECTOR = KillSwitchCollector()


def exposition_registry(*extra_collectors: Any) -> CollectorRegistry:
    """What /metrics serves: all processes' files in multiprocess mode, else this
    process; with the kill switch read at scrape time, plus ``extra_collectors``."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir() is None:
        registry.register(_ProcessMetrics())
    else:
        SettledFilesCollector(registry)
    registry.register(_KILL_SWITCH_COLLECTOR)
    for collector in extra_collectors:
        registry.register(collector)
    return registry


_servers: dict[int, WSGIServer] = {}


def start_metrics_server(port: int, addr: str = "127.0.0.1", *extra_collectors: Any) -> int:
    """Serve /metrics on ``addr:port`` from a daemon thread; port 0 picks a free one.

    ``extra_collectors`` are served next to the process metrics (a worker adds
    ``cluster.ClusterStateCollector``). Returns the bound port. Raises
    ``OSError`` when the port is taken.
    """
    # Each scrape reads the kill switch: its modules (Redis, the store) are imported
    # here, so that the first scrape is not the one that pays for it.
    import workers.coordination  # noqa: F401

    server, _thread = start_http_server(
        port, addr=addr, registry=exposition_registry(*extra_collectors)
    )
    bound = int(server.server_port)
    with _servers_lock:
        _servers[bound] = server
    return bound


def stop_metrics_server(port: int) -> None:
    """Stop the endpoint on ``port`` started by this process (no-op if there is none)."""
    with _servers_lock:
        server = _servers.pop(port, None)
    if server is not None:
        server.shutdown()
        server.server_close()


# --- Celery wiring ----------------------------------------------------------------------


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    from workers.settings import get_settings

    settings = get_settings()
    port = settings.metrics_port
    if not port:
        return
    expose_alert_kinds()
    try:
        bound = start_metrics_server(port, settings.metrics_host, _cluster_collector(sender))
    except OSError as exc:
        # Several workers on one host with the same port: the first serves
        # (and, with a multiprocess dir, serves all of them); the others must
        # not die over a metrics endpoint.
        log.warning("metrics endpoint not started on port %s: %s", port, exc)
        return
    mode = f"multiprocess dir {multiprocess_dir()}" if multiprocess_dir() else "this process"
    log.info("metrics endpoint on %s:%s/metrics (%s)", settings.metrics_host, bound, mode)


def _cluster_collector(consumer: Any) -> Any:
    """Cluster-state gauges for the queues of the worker's app (``consumer.app``)."""
    from workers.observability.cluster import DEFAULT_PRIORITY_STEPS, ClusterStateCollector

    app = getattr(consumer, "app", None)
    if app is None:
        return ClusterStateCollector()
    conf = app.conf
    queues = [conf.task_default_queue, *(queue.name for queue in conf.task_queues or ())]
    options = conf.broker_transport_options or {}
    return ClusterStateCollector(
        queues,
        priority_steps=options.get("priority_steps", DEFAULT_PRIORITY_STEPS),
        key_prefix=options.get("global_keyprefix", ""),
    )


def _on_process_shutdown(pid: int | None = None, **_: Any) -> None:
    # A dead process's "live" gauge files must go, or its last values linger.
    if multiprocess_dir() is not None:
        prometheus_multiprocess.mark_process_dead(pid if pid is not None else os.getpid())


def _on_worker_shutdown(**_: Any) -> None:
    _on_process_shutdown(pid=os.getpid())


def install_worker_hooks(app: Any) -> None:
    """Serve metrics from every worker of ``app`` (on ``EXECQ_METRICS_PORT`` when non-zero).

    Idempotent. Celery's worker signals are process-wide, so ``app`` only
    names what is being instrumented. Beat and Flower import the same app but
    never send these signals, so only workers open a port.
    """
    from celery import signals

    signals.worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="execq.metrics.ready")
    signals.worker_process_shutdown.connect(
        _on_process_shutdown, weak=False, dispatch_uid="execq.metrics.process_shutdown"
    )
    signals.worker_shutdown.connect(
        _on_worker_shutdown, weak=False, dispatch_uid="execq.metrics.shutdown"
    )
