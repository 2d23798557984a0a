"""The Celery app. ``celery -A workers worker|beat|flower`` finds it.

Flower started with it is a view that changes nothing (``workers.celery_ext.flower``).

Delivery is at-least-once (``acks_late`` + ``reject_on_worker_lost``); the
tasks make it exactly-once with client order ids and the intent row. The
default pool is threads: the work is exchange I/O, and one process with many
threads hides exchange latency in a fraction of the memory of prefork.
Threads do not enforce Celery's time limits, so every task also keeps its own
deadline (exchange timeouts, tenacity stop-after-delay).
"""

from __future__ import annotations

import gc
from urllib.parse import unquote, urlsplit

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

from workers import redis_keys
from workers.celery_ext.broker import transport_for
from workers.settings import SettingsError, get_settings, without_credentials

try:
    settings = get_settings()
except SettingsError as exc:
    raise SystemExit(f"execq: {exc}") from None

TASK_MODULES = [
    "tasks.system",
    "tasks.orders",
    "tasks.cancel",
    "tasks.positions",
    "tasks.sweeps",
    "tasks.emergency",
]
# The benchmark's reference tasks: only in workers the bench starts for itself.
HARNESS_TASK_MODULES = ["workers.harness.tasks"] if settings.harness_tasks else []

# Postgres or Redis unreachable for a moment (a restart, a failover): every task
# step is idempotent, so the task is retried rather than acknowledged as failed.
INFRASTRUCTURE_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)
RETRY_ON_INFRASTRUCTURE = {
    "autoretry_for": INFRASTRUCTURE_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
}


def _redbeat_redis_options(redis_url: str) -> dict[str, object]:
    """RedBeat's client options: the URL's credentials, and timeouts so that a Redis
    that stops answering fails beat's tick (``workers.celery_ext.beat``) instead of hanging it."""
    parts = urlsplit(redis_url)
    options: dict[str, object] = {"socket_timeout": 5, "socket_connect_timeout": 5}
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    return options


app = Celery("execq")
_transport_options = {
    "visibility_timeout": settings.visibility_timeout_s,
    # kombu scans for expired unacknowledged messages only on every 10th sweep by
    # default (up to 100 s late); scan on every sweep so a killed worker's tasks
    # come back one sweep after the visibility timeout.
    "unacked_restore_throttle": 1,
}
app.conf.update(
    broker_url=settings.redis_url,
    broker_transport=transport_for(settings.redis_url),
    result_backend=settings.redis_url,
    include=TASK_MODULES + HARNESS_TASK_MODULES,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options=_transport_options,
    result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
    # rediss:// (TLS): every connection verifies the server's certificate. Explicit,
    # because with a certificate check left unset kombu connects to a rediss:// broker
    # without any (it only warns).
    broker_use_ssl=settings.redis_tls,
    redis_backend_use_ssl=settings.redis_tls,
    broker_connection_retry_on_startup=True,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    task_soft_time_limit=settings.task_soft_time_limit_s,
    task_time_limit=settings.task_hard_time_limit_s,
    worker_send_task_events=True,
    task_send_sent_event=True,
    # Task events go out in batches on a timer (``workers.celery_ext.consumer``).
    worker_consumer="workers.celery_ext.consumer:Consumer",
    # No STARTED state in the result backend: storing it runs before the task body,
    # outside its retries, so a Redis outage at that moment failed (and acked) the
    # task before it wrote anything. Flower sees task-started events regardless.
    task_track_started=False,
    result_expires=24 * 3600,
    result_extended=True,
    worker_pool="threads",
    worker_concurrency=settings.worker_concurrency,
    timezone="UTC",
    enable_utc=True,
    beat_scheduler="workers.celery_ext.beat:Scheduler",
    # ``celery inspect conf`` / ``report`` and Flower's worker page show every setting;
    # Celery masks the broker and backend URLs' passwords but not RedBeat's URL. So
    # RedBeat's URL has no credentials and they travel as its options, whose
    # ``password`` Celery masks.
    redbeat_redis_url=without_credentials(settings.redis_url),
    redbeat_redis_options=_redbeat_redis_options(settings.redis_url),
    redbeat_redis_use_ssl=settings.redis_tls,
    redbeat_key_prefix=redis_keys.REDBEAT_PREFIX,
    # The standby beat takes over at most this long after the active one dies.
    redbeat_lock_timeout=settings.beat_lock_timeout_s,
    beat_max_loop_interval=1,
)

from beat_schedule import build_beat_schedule  # noqa: E402  (needs the settings above)

app.conf.beat_schedule = build_beat_schedule(settings)


@worker_init.connect
def _install_rate_limiter(**_: object) -> None:
    from workers.exchange.ratelimit import install_request_hook

    install_request_hook()


@worker_ready.connect
@worker_process_init.connect
def _freeze_startup_heap(**_: object) -> None:
    # A worker's heap is mostly what it imported (ccxt, SQLAlchemy, Celery: about
    # 130,000 objects) and never frees. Left in the collector's oldest generation,
    # every full collection walks all of it: 50-130 ms with the GIL held, which
    # stalled every thread of the worker and was the p99 of enqueue -> exchange ack
    # at 50 orders/s (execq bench). Frozen, a full collection walks only what the
    # worker allocated since; cyclic garbage made later is still collected.
    # ``worker_process_init`` does the same in each prefork child.
    gc.collect()
    gc.freeze()


@worker_ready.connect
def _recover_on_start(sender: object = None, **_: object) -> None:
    # A worker that starts after a crash repairs what the crash left in doubt.
    if settings.recover_on_worker_start:
        app.send_task("recovery_sweep")


from workers.observability.metrics import install_worker_hooks  # noqa: E402

install_worker_hooks(app)

if settings.log_format == "json":
    from workers.celery_ext import json_logs

    json_logs.install(app)

from workers.celery_ext.flower import install as _guard_flower  # noqa: E402

# ``celery -A workers flower``: read-only, and authenticated unless --insecure-local.
_guard_flower()
