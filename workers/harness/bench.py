"""``execq bench``: the real order pipeline against a no-op Celery task, on one machine.

One run starts its own simulator and workers (``workers.harness.stack.Stack``) on a
private ``redis-server`` (or a given, empty Redis database) and a *scratch*
PostgreSQL database created for the run and dropped after it (``scratch``;
``chaos`` uses the same), so a user's data is never read or written. Phases, in
order:

1. **warm-up**: a burst of orders and no-ops, so every worker thread has its
   ccxt clients and the reference prices are cached (not measured);
2. **baseline**: ``--orders`` no-op tasks (``workers.harness.tasks.noop``) through the
   same broker and workers; ``baseline_noop_per_s``;
3. **floor**: ``--orders`` tasks that only create the order on the exchange
   (``workers.harness.tasks.create_only``: Celery plus one ccxt create, none of execq's
   work); ``floor_create_per_s``, ``cpu_ms_per_floor_create``; the budget is read
   against it (``targets``: CPU per order at most 2.5 times the floor's, p50 at most
   5 ms over the floor's);
4. **throughput**: ``--orders`` market orders (enqueue → worker → simulator →
   Postgres), across the three accounts and all five symbols so no per-symbol
   lock serialises them; ``orders_per_s`` counts orders that reached a
   terminal state, ``verified_per_s`` their verification as well;
5. **latency**: orders paced open-loop at ``--rate`` per second for
   ``--rate-seconds``; ``p50_ms``/``p99_ms`` are enqueue → exchange ack, the
   ack being the simulator ledger's acceptance timestamp (``worker_ack_*``:
   the worker's ``orders.acked_at``; ``verify_*``: enqueue → verdict event);
   then floor tasks paced the same way (``floor_p50_ms``/``floor_p99_ms``).

Phases 2 to 4 preload the queue with the workers' consumers cancelled and
then re-add them, so the figure is the workers' drain rate, not the
producer's send rate. Exchange latency is a simulator ``latency`` fault rule.

``--sim-only`` instead measures the simulator alone:
``exchange_sim.bench.run_load``.

``--ingress`` measures the HTTP API (``run_ingress_bench``): ``execq api`` on the
run's Redis and database; ``--orders`` signals recorded and enqueued by the Python
outbox producer (``producer_per_s``) and then through the API (``api_per_s``), each
with ``--ingress-concurrency`` requests in flight and no worker consuming, and
``ratio`` between them; then requests paced open-loop at ``--ingress-rate`` for
``--rate-seconds`` (``p50_ms``/``p99_ms``: request sent -> answer received, at the
client), and again while a worker executes them on the same machine
(``with_worker_p50_ms``/``with_worker_p99_ms``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql

from workers.harness.polling import wait_for
from workers.harness.services import Services, ensure_services, libpq_url
from workers.harness.sim_client import SimulatorClient, exchange_client_id
from workers.harness.stack import Stack
from workers.producer import Producer, order_kwargs

# Seconds to wait for a phase to drain before giving up on it.
PHASE_TIMEOUT_S = 600.0
# How often a phase checks whether it is done. Its end time comes from the rows'
# own timestamps, not from when a check saw it, so a slower check costs no
# accuracy; a faster one was a seq scan of orders (or parsing every no-op
# result) 20 times a second, on the same two cores the pipeline runs on.
_POLL_S = 0.5
TERMINAL_STATUSES = ("filled", "canceled", "rejected", "expired")

# Per symbol, the smallest amount valid on every exchange (step, min qty, min notional;
# on OKX a whole number of lots: 0.005 BTC is 0.5 contracts, 40 DOGE 0.04).
BENCH_AMOUNTS = {
    "BTC/USDT:USDT": "0.005",
    "ETH/USDT:USDT": "0.01",
    "SOL/USDT:USDT": "1",
    "XRP/USDT:USDT": "10",
    "DOGE/USDT:USDT": "40",
}
ACCOUNTS = ("binance", "bybit", "okx")


class RedisNotEmpty(RuntimeError):
    """A given Redis database holds keys: a run would take its tasks and flush them."""


# --- the scratch environment (shared with chaos) -------------------------------------------


def database_url_with_name(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def require_empty(url: str) -> None:
    """Raise RedisNotEmpty unless the Redis database at ``url`` holds no key.

    A run's workers consume the database's queue and the run flushes it at the
    end: it must be nobody else's.
    """
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        size = client.dbsize()
    finally:
        client.close()
    if size:
        raise RedisNotEmpty(
            f"Redis database {redact(url)} holds {size} keys; give an empty one, or leave "
            "out --redis-url to run on a private redis-server"
        )


def release_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.RedisError:
        pass  # a private Redis may already be gone; nothing of the user's is there
    finally:
        client.close()


def redact(url: str) -> str:
    from workers.settings import redact_url

    return redact_url(url)


def migrate(database_url: str) -> None:
    """Apply the Alembic migrations to ``database_url`` (not to the configured database)."""
    from alembic import command
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from workers.store.migrate import alembic_config

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def drop_database(database_url: str) -> None:
    name = _database_name(database_url)
    admin_url = libpq_url(database_url_with_name(database_url, "postgres"))
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _reset_process_caches() -> None:
    """Forget settings, engine, Redis client and exchange clients built from the old env."""
    from workers import redis_client
    from workers.exchange import gateway
    from workers.settings import get_settings
    from workers.store.db import dispose_engine

    dispose_engine()
    with redis_client._lock:
        if redis_client._client is not None:
            redis_client._client.close()
        redis_client._client = None
        redis_client._client_pid = None
    gateway.reset_clients()
    get_settings.cache_clear()


@contextlib.contextmanager
def process_env(values: Mapping[str, str]) -> Iterator[None]:
    """Point this process's execq settings at ``values`` for the block, then restore.

    ``audit`` and the store read ``get_settings()``; the scratch run must be
    what they see, and the caller's configuration must come back afterwards.
    """
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    _reset_process_caches()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reset_process_caches()


@dataclass
class Scratch:
    """Where a bench or chaos run lives: its Redis database, its PostgreSQL database."""

    kind: str
    redis_url: str
    database_url: str
    services: Services
    workdir: Path
    notes: list[str] = field(default_factory=list)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for the run's processes (workers, beat)."""
        return {
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database_url,
            # Workers of a scratch run never serve metrics on the user's port.
            "EXECQ_METRICS_PORT": "0",
            # The no-op baseline and the create-only floor.
            "EXECQ_HARNESS_TASKS": "true",
            **(extra or {}),
        }


@contextlib.contextmanager
def scratch(
    kind: str,
    *,
    workdir: Path,
    redis_url: str | None = None,
    database_url: str | None = None,
) -> Iterator[Scratch]:
    """A Redis server and a migrated scratch PostgreSQL database for one run.

    Redis: a private ``redis-server`` started for the run, or with ``redis_url``
    that database, which must be empty (``require_empty``) and is flushed at the
    end. PostgreSQL: a new database ``execq_<kind>_<pid>_<random>`` on the
    configured server, dropped at the end (a private server when the configured
    one does not answer, ``ensure_services``); a given ``database_url`` is used as
    is and kept.
    """
    from workers.settings import load_settings

    owns_database = database_url is None
    database_target = database_url or database_url_with_name(
        load_settings().database_url, f"execq_{kind}_{os.getpid()}_{secrets.token_hex(3)}"
    )
    services = ensure_services(redis_url, database_target, workdir / "services")
    given_redis = "redis" not in services.started
    checked = False
    try:
        if given_redis:
            require_empty(services.redis_url)
        checked = True
        migrate(services.database_url)
        run = Scratch(
            kind=kind,
            redis_url=services.redis_url,
            database_url=services.database_url,
            services=services,
            workdir=workdir,
            notes=list(services.notes),
        )
        with process_env({"REDIS_URL": run.redis_url, "DATABASE_URL": run.database_url}):
            yield run
    finally:
        if given_redis and checked:
            release_redis(services.redis_url)
        if owns_database and "postgres" not in services.started:
            with contextlib.suppress(psycopg.Error):
                drop_database(services.database_url)
        services.stop()


def client_app(redis_url: str, visibility_timeout_s: int | None = None) -> Any:
    """A Celery client on the run's broker (not ``workers.app``, bound to the configured one),
    sending through the same broker transport as ``workers.app``."""
    from celery import Celery

    from workers.celery_ext.broker import transport_for

    app = Celery("execq-bench-client", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.broker_transport = transport_for(redis_url)
    if visibility_timeout_s is not None:
        app.conf.broker_transport_options = {"visibility_timeout": visibility_timeout_s}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        broker_connection_retry_on_startup=True,
        result_extended=True,
    )
    return app


def process_tree_peak_rss_mb(pid: int) -> float:
    """Largest peak RSS (VmHWM) of ``pid`` and its children, in MB; 0 when it is gone."""
    pids = [pid, *_children(pid)]
    peaks = [_vm_hwm_kb(p) for p in pids]
    return round(max(peaks, default=0) / 1024, 1)


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its children."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for each in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        # Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name.
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (the value at or below which ``fraction`` of them lie)."""
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, int(-(-fraction * len(ordered) // 1)) - 1))
    return round(ordered[index], 2)


# --- bench -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchOptions:
    orders: int = 2000
    latency_ms: int = 0
    rate: float = 50.0
    rate_seconds: float = 10.0
    workers: int = 1
    concurrency: int = 32
    pool: str = "threads"
    loglevel: str = "WARNING"
    redis_url: str | None = None
    database_url: str | None = None
    workdir: Path | None = None
    sim_only: bool = False
    sim_seconds: float = 10.0
    sim_concurrency: int = 32
    skip_throughput: bool = False
    skip_latency: bool = False


@dataclass
class _Pairs:
    """Round-robin over (account, symbol, amount) so load spreads over all fifteen books."""

    items: list[tuple[str, str, str]] = field(
        default_factory=lambda: [
            (account, symbol, amount)
            for symbol, amount in BENCH_AMOUNTS.items()
            for account in ACCOUNTS
        ]
    )

    def __getitem__(self, index: int) -> tuple[str, str, str]:
        return self.items[index % len(self.items)]


class BenchRun:
    """One bench run on a started stack; each phase returns its figures."""

    def __init__(self, scratch_run: Scratch, stack: Stack, options: BenchOptions) -> None:
        self.scratch = scratch_run
        self.stack = stack
        self.options = options
        self.app = client_app(scratch_run.redis_url)
        self.redis = redis.Redis.from_url(scratch_run.redis_url)
        # A long ledger (thousands of orders) takes a while to serialise.
        self.sim = SimulatorClient(stack.env["EXECQ_SIM_URL"], timeout_s=60)
        self.run_id = secrets.token_hex(3)
        self.nodes: list[str] = []
        self.pairs = _Pairs()
        from sqlalchemy import create_engine

        self.engine = create_engine(scratch_run.database_url, pool_size=2)
        self.producer = Producer(self.app, self.engine)

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()
        self.sim.close()
        self.app.close()

    # --- plumbing ---

    def start_workers(self) -> None:
        for index in range(self.options.workers):
            name = f"bench{index + 1}-{os.getpid()}@localhost"
            self.stack.start_worker(
                name,
                concurrency=self.options.concurrency,
                pool=self.options.pool,
                loglevel=self.options.loglevel,
            )
            self.nodes.append(name)

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of the workers and of the simulator."""
        workers = sum(
            process_tree_cpu_s(pid)
            for pid in (self.stack.worker(node).pid for node in self.nodes)
            if pid
        )
        sim = self.stack.processes["sim"].pid
        return {"workers": workers, "sim": process_tree_cpu_s(sim) if sim else 0.0}

    def _cpu_per(self, before: dict[str, float], count: int) -> dict[str, float]:
        after = self.cpu_s()
        return {
            name: round((after[name] - before[name]) * 1000 / max(1, count), 2) for name in after
        }

    def _consumers(self, on: bool) -> None:
        control = self.app.control
        if on:
            control.add_consumer("celery", destination=self.nodes, reply=True, timeout=5)
        else:
            control.cancel_consumer("celery", destination=self.nodes, reply=True, timeout=5)

    def send_order(self, signal_id: str, index: int) -> float:
        account, symbol, amount = self.pairs[index]
        enqueued_ms = time.time() * 1000
        self.producer.send(
            "execute_market_order",
            order_kwargs(signal_id, account, symbol, "buy", amount, enqueued_at_ms=enqueued_ms),
        )
        return enqueued_ms

    def _scalar_row(self, query: str, **params: Any) -> Any:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            return connection.execute(text(query), params).one()

    def _orders_done(self, prefix: str) -> tuple[int, datetime | None]:
        count, last = self._scalar_row(
            "SELECT count(*), max(terminal_at) FROM orders "
            "WHERE signal_id LIKE :prefix AND status = ANY(:terminal)",
            prefix=prefix + "%",
            terminal=list(TERMINAL_STATUSES),
        )
        return int(count), last

    def _verified_done(self, prefix: str) -> tuple[int, datetime | None]:
        count, last = self._scalar_row(
            "SELECT count(DISTINCT client_order_id), max(occurred_at) FROM events "
            "WHERE signal_id LIKE :prefix AND type LIKE 'verification\\_%' "
            "AND type <> 'verification_source'",
            prefix=prefix + "%",
        )
        return int(count), last

    def _wait(self, done: Any, total: int, what: str) -> Any:
        """Wait until ``done()`` counts ``total``; return the last completion it reports."""
        counted: list[int] = [0]

        def finished() -> tuple[Any] | None:
            counted[0], last = done()
            return (last,) if counted[0] >= total else None

        (last,) = wait_for(
            finished,
            PHASE_TIMEOUT_S,
            interval_s=_POLL_S,
            error=lambda _: TimeoutError(
                f"{what}: {counted[0]}/{total} done after {PHASE_TIMEOUT_S:.0f}s"
            ),
        )
        return last

    # --- phases ---

    def warm_up(self) -> None:
        # Enough that every worker thread builds its client for every account before
        # anything is measured (a thread builds one the first time it sees an account).
        burst = max(20, self.options.workers * self.options.concurrency * 6)
        prefix = f"bench-{self.run_id}-warm-"
        for index in range(burst):
            self.send_order(f"{prefix}{index}", index)
        ids = [self.app.send_task("noop").id for _ in range(burst)]
        self._wait(lambda: self._orders_done(prefix), burst, "warm-up orders")
        self._wait(lambda: self._verified_done(prefix), burst, "warm-up verification")
        self._wait(lambda: self._noops_done(ids), burst, "warm-up no-ops")

    def _noops_done(self, ids: list[str]) -> tuple[int, float | None]:
        done = 0
        last: float | None = None
        for start in range(0, len(ids), 500):
            keys = [f"celery-task-meta-{task_id}" for task_id in ids[start : start + 500]]
            for raw in self.redis.mget(keys):
                if raw is None:
                    continue
                meta = json.loads(raw)
                if meta.get("status") != "SUCCESS":
                    continue
                done += 1
                finished = datetime.fromisoformat(meta["date_done"]).timestamp()
                last = finished if last is None else max(last, finished)
        return done, last

    def _drain_tasks(self, send_all: Callable[[], list[str]], what: str) -> dict[str, Any]:
        """Queue tasks with the consumers off (``send_all`` returns their ids), then time
        the workers' drain of them to the last result's ``date_done``."""
        self._consumers(False)
        ids = send_all()
        cpu = self.cpu_s()
        started = time.time()
        self._consumers(True)
        last = self._wait(lambda: self._noops_done(ids), len(ids), what)
        seconds = max(1e-6, last - started)
        return {
            "seconds": round(seconds, 3),
            "rate": len(ids) / seconds,
            "cpu_ms": self._cpu_per(cpu, len(ids)),
        }

    def baseline(self) -> dict[str, Any]:
        count = self.options.orders
        return self._drain_tasks(
            lambda: [self.app.send_task("noop").id for _ in range(count)], "no-op baseline"
        )

    def send_create_only(
        self, signal_id: str, index: int, task_ids: list[str]
    ) -> tuple[str, float]:
        """One floor task (``workers.harness.tasks.create_only``), its id appended to ``task_ids``;
        returns its client order id and when it was sent."""
        from workers.execution.client_ids import client_order_id

        account, symbol, amount = self.pairs[index]
        cid = client_order_id(signal_id, "open")
        enqueued_ms = time.time() * 1000
        task_ids.append(
            self.app.send_task("bench_create_only", args=(account, symbol, amount, cid)).id
        )
        return cid, enqueued_ms

    def floor(self) -> dict[str, Any]:
        """The baseline's drain, of tasks that only create an order on the exchange."""
        prefix = f"bench-{self.run_id}-floor-"

        def send_all() -> list[str]:
            ids: list[str] = []
            for index in range(self.options.orders):
                self.send_create_only(f"{prefix}{index}", index, ids)
            return ids

        return self._drain_tasks(send_all, "create-only floor")

    def throughput(self) -> dict[str, Any]:
        count = self.options.orders
        prefix = f"bench-{self.run_id}-tput-"
        self._consumers(False)
        for index in range(count):
            self.send_order(f"{prefix}{index}", index)
        cpu = self.cpu_s()
        started = time.time()
        self._consumers(True)
        last_terminal = self._wait(lambda: self._orders_done(prefix), count, "orders")
        last_verified = self._wait(lambda: self._verified_done(prefix), count, "verification")
        cpu_ms = self._cpu_per(cpu, count)
        seconds = max(1e-6, last_terminal.timestamp() - started)
        verified_seconds = max(1e-6, last_verified.timestamp() - started)
        statuses = dict(
            self._rows(
                "SELECT status, count(*) FROM orders WHERE signal_id LIKE :prefix GROUP BY status",
                prefix=prefix + "%",
            )
        )
        return {
            "orders": count,
            "seconds": round(seconds, 3),
            "rate": count / seconds,
            "verified_rate": count / verified_seconds,
            "statuses": statuses,
            "cpu_ms": cpu_ms,
        }

    def _rows(self, query: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            return list(connection.execute(text(query), params).all())

    def _paced(
        self, prefix: str, send: Callable[[str, int], tuple[str, float]]
    ) -> dict[str, float]:
        """Send ``rate`` x ``rate_seconds`` tasks open-loop: each leaves at its slot, whatever
        the earlier ones did. ``send(signal_id, index)`` returns (client order id, sent at ms)."""
        rate = self.options.rate
        count = max(1, int(rate * self.options.rate_seconds))
        enqueued: dict[str, float] = {}
        start = time.monotonic() + 0.2
        for index in range(count):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            cid, sent_ms = send(f"{prefix}{index}", index)
            enqueued[cid] = sent_ms
        return enqueued

    def _exchange_acks(self, enqueued: Mapping[str, float]) -> list[float]:
        """Enqueue -> the simulator's acceptance timestamp, per order of ``enqueued``."""
        ledger = self.sim.ledger()
        exchanges = {row["exchange"] for row in ledger}
        # The ledger knows each order by its exchange's form of execq's id.
        enqueued_by_exchange_id = {
            (exchange, exchange_client_id(exchange, cid)): sent_ms
            for cid, sent_ms in enqueued.items()
            for exchange in exchanges
        }
        return [
            row["timestamp"] - enqueued_by_exchange_id[(row["exchange"], row["clientOrderId"])]
            for row in ledger
            if (row["exchange"], row.get("clientOrderId")) in enqueued_by_exchange_id
        ]

    def floor_latency(self) -> dict[str, Any]:
        """Floor tasks paced like the orders of ``latency``: enqueue -> exchange ack."""
        ids: list[str] = []
        enqueued = self._paced(
            f"bench-{self.run_id}-flat-",
            lambda signal_id, index: self.send_create_only(signal_id, index, ids),
        )
        self._wait(lambda: self._noops_done(ids), len(ids), "paced create-only floor")
        acks = self._exchange_acks(enqueued)
        return {"floor_p50_ms": percentile(acks, 0.50), "floor_p99_ms": percentile(acks, 0.99)}

    def latency(self) -> dict[str, Any]:
        """Orders paced open-loop at ``rate``; enqueue → ack from the ledger and the worker."""
        from workers.execution.client_ids import client_order_id

        prefix = f"bench-{self.run_id}-lat-"

        def send(signal_id: str, index: int) -> tuple[str, float]:
            return client_order_id(signal_id, "open"), self.send_order(signal_id, index)

        enqueued = self._paced(prefix, send)
        count = len(enqueued)
        self._wait(lambda: self._orders_done(prefix), count, "paced orders")
        self._wait(lambda: self._verified_done(prefix), count, "paced verification")
        exchange_ack = self._exchange_acks(enqueued)
        worker_ack = [
            acked.timestamp() * 1000 - enqueued[cid]
            for cid, acked in self._rows(
                "SELECT client_order_id, acked_at FROM orders "
                "WHERE signal_id LIKE :prefix AND acked_at IS NOT NULL",
                prefix=prefix + "%",
            )
        ]
        verdict = [
            occurred.timestamp() * 1000 - enqueued[cid]
            for cid, occurred in self._rows(
                "SELECT client_order_id, min(occurred_at) FROM events "
                "WHERE signal_id LIKE :prefix AND type LIKE 'verification\\_%' "
                "AND type <> 'verification_source' GROUP BY client_order_id",
                prefix=prefix + "%",
            )
        ]
        return {
            "paced_orders": count,
            "rate": self.options.rate,
            "p50_ms": percentile(exchange_ack, 0.50),
            "p99_ms": percentile(exchange_ack, 0.99),
            "max_ms": percentile(exchange_ack, 1.0),
            "mean_ms": round(statistics.fmean(exchange_ack), 2) if exchange_ack else None,
            "worker_ack_p50_ms": percentile(worker_ack, 0.50),
            "worker_ack_p99_ms": percentile(worker_ack, 0.99),
            "verify_p50_ms": percentile(verdict, 0.50),
            "verify_p99_ms": percentile(verdict, 0.99),
        }

    def worker_rss_mb(self) -> float:
        pids = [self.stack.worker(node).pid for node in self.nodes]
        return max((process_tree_peak_rss_mb(pid) for pid in pids if pid), default=0.0)


def set_latency(sim: SimulatorClient, latency_ms: int) -> None:
    rules = [{"kind": "latency", "latency_ms": latency_ms}] if latency_ms else []
    sim.faults({"rules": rules})


def _machine() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    return {"cpus": os.cpu_count(), "load1": round(load1, 2), "load5": round(load5, 2)}


def run_sim_only(options: BenchOptions, workdir: Path) -> dict[str, Any]:
    from exchange_sim.bench import run_load

    with Stack(env={}, workdir=workdir) as stack:
        url = stack.start_simulator()
        before = _machine()
        result = run_load(url, options.sim_seconds, options.sim_concurrency)
    return {"mode": "sim-only", **result, "target_req_per_s": 2000, "machine": before}


def run_bench(**overrides: Any) -> dict[str, Any]:
    """Run the benchmark; returns the figures (the JSON ``execq bench --json`` prints)."""
    options = BenchOptions(**overrides)
    with contextlib.ExitStack() as cleanup:
        workdir = options.workdir
        if workdir is None:
            workdir = Path(
                cleanup.enter_context(tempfile.TemporaryDirectory(prefix="execq-bench-"))
            )
        if options.sim_only:
            return run_sim_only(options, workdir)
        return _run_pipeline(options, workdir)
    raise AssertionError("unreachable")


def _run_pipeline(options: BenchOptions, workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    with (
        scratch(
            "bench",
            workdir=workdir,
            redis_url=options.redis_url,
            database_url=options.database_url,
        ) as run,
        Stack(env=run.env(), workdir=workdir / "stack") as stack,
    ):
        stack.start_simulator()
        bench = BenchRun(run, stack, options)
        try:
            bench.start_workers()
            set_latency(bench.sim, options.latency_ms)
            machine_before = _machine()
            bench.warm_up()
            baseline = bench.baseline()
            result: dict[str, Any] = {
                "mode": "pipeline",
                "latency_ms": options.latency_ms,
                "workers": options.workers,
                "concurrency": options.concurrency,
                "pool": options.pool,
                "baseline_noop_per_s": round(baseline["rate"], 1),
            }
            if not options.skip_throughput:
                floor = bench.floor()
                result.update(
                    floor_create_per_s=round(floor["rate"], 1),
                    floor_ratio=round(floor["rate"] / baseline["rate"], 3),
                    cpu_ms_per_floor_create=floor["cpu_ms"],
                )
                throughput = bench.throughput()
                result.update(
                    orders=throughput["orders"],
                    orders_per_s=round(throughput["rate"], 1),
                    verified_per_s=round(throughput["verified_rate"], 1),
                    ratio=round(throughput["rate"] / baseline["rate"], 3),
                    throughput_seconds=throughput["seconds"],
                    statuses=throughput["statuses"],
                    # CPU per task explains the ratio: what an order costs beyond Celery.
                    cpu_ms_per_order=throughput["cpu_ms"],
                    cpu_ms_per_noop=baseline["cpu_ms"],
                )
            if not options.skip_latency:
                latency = bench.latency()
                result.update({key: value for key, value in latency.items() if key != "rate"})
                result.update(bench.floor_latency())
                result["latency_rate"] = latency["rate"]
            result["worker_rss_mb"] = bench.worker_rss_mb()
            result["machine"] = {"before": machine_before, "after": _machine()}
            result["services"] = run.notes
            result["redis_url"] = redact(run.redis_url)
            result["database_url"] = redact(run.database_url)
            result["seconds"] = round(time.monotonic() - started, 1)
            return result
        finally:
            bench.close()


# --- targets ------------------------------------------------------------------------------------

SIM_TARGET_REQ_PER_S = 2000
# The order pipeline's budget, against the floor task measured in the same run (a task
# that only creates the order on the exchange): a worker spends at most this many times
# the floor's CPU per order, and an order reaches the exchange at most this much later
# than the floor's (p50, enqueue -> exchange ack), at every injected latency.
CPU_PER_ORDER_FLOOR_FACTOR = 2.5
P50_OVER_FLOOR_MS = 5.0
RSS_TARGET_MB = 150


def _check(met: bool | None, detail: str) -> dict[str, Any]:
    return {"met": met, "detail": detail}


def targets(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each speed target that applies to this run: met (True/False) or not measured (None)."""
    if result.get("mode") == "sim-only":
        rate = result["req_per_s"]
        return {
            "sim_req_per_s": _check(
                rate >= SIM_TARGET_REQ_PER_S, f"{rate} >= {SIM_TARGET_REQ_PER_S} req/s"
            )
        }
    checks: dict[str, dict[str, Any]] = {}
    latency = result["latency_ms"]
    order_cpu = (result.get("cpu_ms_per_order") or {}).get("workers")
    floor_cpu = (result.get("cpu_ms_per_floor_create") or {}).get("workers")
    if order_cpu and floor_cpu:
        factor = round(order_cpu / floor_cpu, 2)
        checks["cpu_per_order_vs_floor"] = _check(
            factor <= CPU_PER_ORDER_FLOOR_FACTOR,
            f"{factor}x the floor's CPU per order <= {CPU_PER_ORDER_FLOOR_FACTOR}x at {latency} ms",
        )
    if result.get("p50_ms") is not None and result.get("floor_p50_ms") is not None:
        over = round(result["p50_ms"] - result["floor_p50_ms"], 2)
        checks["p50_vs_floor"] = _check(
            over <= P50_OVER_FLOOR_MS,
            f"p50 {over} ms over the floor's <= {P50_OVER_FLOOR_MS} ms at {latency} ms",
        )
    checks["worker_rss_mb"] = _check(
        result["worker_rss_mb"] <= RSS_TARGET_MB, f"{result['worker_rss_mb']} <= {RSS_TARGET_MB} MB"
    )
    return checks


# --- ingress: signals over HTTP against the Python producer -------------------------------------

INGRESS_RATIO_TARGET = 0.5
INGRESS_P99_TARGET_MS = 50.0
INGRESS_P99_TARGET_RATE = 100.0
_INGRESS_KEY_NAME = "bench"


@dataclass(frozen=True)
class IngressOptions:
    signals: int = 2000
    concurrency: int = 8
    rate: float = 100.0
    rate_seconds: float = 10.0
    redis_url: str | None = None
    database_url: str | None = None
    workdir: Path | None = None


def _ingress_bodies(prefix: str, count: int) -> list[dict[str, Any]]:
    pairs = _Pairs()
    bodies = []
    for index in range(count):
        account, symbol, amount = pairs[index]
        bodies.append(
            {
                "signal_id": f"{prefix}{index}",
                "exchange": account,
                "symbol": symbol,
                "side": "buy",
                "amount": amount,
            }
        )
    return bodies


async def _post_all(
    url: str, key: str, bodies: Sequence[dict[str, Any]], concurrency: int
) -> tuple[float, dict[int, int]]:
    """Post every body with ``concurrency`` requests in flight; (seconds, count by status)."""
    import asyncio

    import aiohttp

    statuses: dict[int, int] = {}
    pending = iter(bodies)
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as session:

        async def sender() -> None:
            for body in pending:
                async with session.post("/v1/signals", json=body) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return time.perf_counter() - started, statuses


async def _post_paced(
    url: str, key: str, bodies: Sequence[dict[str, Any]], rate: float
) -> tuple[list[float], dict[int, int]]:
    """Post ``bodies`` open-loop at ``rate`` per second (each at its slot, whatever the
    earlier ones did); each request's latency in ms, and the count by status."""
    import asyncio

    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as session:

        async def one(body: dict[str, Any]) -> None:
            started = time.perf_counter()
            async with session.post("/v1/signals", json=body) as response:
                await response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[response.status] = statuses.get(response.status, 0) + 1

        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2
        tasks = []
        for index, body in enumerate(bodies):
            delay = start + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(body)))
        await asyncio.gather(*tasks)
    return latencies, statuses


def _producer_rate(producer: Producer, prefix: str, count: int, concurrency: int) -> float:
    """Signals per second the Python outbox producer records and enqueues, ``concurrency``
    threads sending side by side."""
    from concurrent.futures import ThreadPoolExecutor

    messages = [
        (
            "execute_market_order",
            order_kwargs(
                body["signal_id"], body["exchange"], body["symbol"], "buy", body["amount"]
            ),
        )
        for body in _ingress_bodies(prefix, count)
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in pool.map(lambda message: producer.send(*message), messages):
            pass
    return count / (time.perf_counter() - started)


def run_ingress_bench(**overrides: Any) -> dict[str, Any]:
    """``execq bench --ingress``: accepted signals per second through ``execq api`` against the
    Python outbox producer in the same run, then request latency at a paced rate while a
    worker executes the signals. Returns the figures."""
    import asyncio

    options = IngressOptions(**overrides)
    started = time.monotonic()
    key = secrets.token_hex(24)
    api_env = {
        "EXECQ_API_KEYS": json.dumps(
            [{"name": _INGRESS_KEY_NAME, "key": key, "scopes": ["signal", "read"]}]
        ),
        # The bench measures the service, not its per-key budget.
        "EXECQ_API_RATE_LIMIT_PER_S": "1000000",
        "EXECQ_API_RATE_LIMIT_BURST": "1000000",
    }
    with contextlib.ExitStack() as cleanup:
        workdir = options.workdir or Path(
            cleanup.enter_context(tempfile.TemporaryDirectory(prefix="execq-ingress-"))
        )
        run = cleanup.enter_context(
            scratch(
                "ingress",
                workdir=workdir,
                redis_url=options.redis_url,
                database_url=options.database_url,
            )
        )
        stack = cleanup.enter_context(Stack(env=run.env(), workdir=workdir / "stack"))
        stack.start_simulator()
        url = stack.start_api(extra_env=api_env)
        app = client_app(run.redis_url)
        # As workers.app, which default_producer() and the API send through: Flower sees
        # each signal sent.
        app.conf.task_send_sent_event = True
        cleanup.callback(app.close)
        from sqlalchemy import create_engine

        engine = create_engine(run.database_url, pool_size=options.concurrency)
        cleanup.callback(engine.dispose)
        producer = Producer(app, engine)
        run_id = secrets.token_hex(3)
        machine_before = _machine()
        # Warm-up: both paths' connections and the API's first requests (not measured).
        warm = min(200, options.signals)
        asyncio.run(
            _post_all(url, key, _ingress_bodies(f"in-{run_id}-warm-", warm), options.concurrency)
        )
        _producer_rate(producer, f"in-{run_id}-pwarm-", warm, options.concurrency)

        producer_per_s = _producer_rate(
            producer, f"in-{run_id}-py-", options.signals, options.concurrency
        )
        seconds, statuses = asyncio.run(
            _post_all(
                url,
                key,
                _ingress_bodies(f"in-{run_id}-http-", options.signals),
                options.concurrency,
            )
        )
        accepted = statuses.get(202, 0)
        api_per_s = accepted / seconds

        # Paced, the API alone (the queue holds the signals), then again while a worker
        # executes them on the same machine. The throughput phases' signals are dropped
        # from the queue before the worker starts.
        paced_count = max(1, int(options.rate * options.rate_seconds))
        latencies, paced_statuses = asyncio.run(
            _post_paced(url, key, _ingress_bodies(f"in-{run_id}-lat-", paced_count), options.rate)
        )
        purged = app.control.purge()
        stack.start_worker(
            f"ingress-{os.getpid()}",
            concurrency=16,
            loglevel="WARNING",
            extra_env={"EXECQ_RECOVER_ON_WORKER_START": "false"},
        )
        busy_latencies, busy_statuses = asyncio.run(
            _post_paced(url, key, _ingress_bodies(f"in-{run_id}-busy-", paced_count), options.rate)
        )
        api_cpu_s = process_tree_cpu_s(stack.processes["api"].pid or 0)
        return {
            "mode": "ingress",
            "signals": options.signals,
            "concurrency": options.concurrency,
            "producer_per_s": round(producer_per_s, 1),
            "api_per_s": round(api_per_s, 1),
            "ratio": round(api_per_s / producer_per_s, 3),
            "api_statuses": statuses,
            "latency_rate": options.rate,
            "paced_requests": paced_count,
            "paced_statuses": paced_statuses,
            "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": percentile(latencies, 1.0),
            "with_worker_statuses": busy_statuses,
            "with_worker_p50_ms": percentile(busy_latencies, 0.50),
            "with_worker_p99_ms": percentile(busy_latencies, 0.99),
            "purged_before_paced": purged,
            "api_cpu_s": round(api_cpu_s, 2),
            "machine": {"before": machine_before, "after": _machine()},
            "services": run.notes,
            "seconds": round(time.monotonic() - started, 1),
        }
    raise AssertionError("unreachable")


def ingress_targets(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    checks = {
        "ratio": _check(
            result["ratio"] >= INGRESS_RATIO_TARGET,
            f"{result['ratio']} >= {INGRESS_RATIO_TARGET} (API / Python producer)",
        )
    }
    if result.get("p99_ms") is not None and result["latency_rate"] >= INGRESS_P99_TARGET_RATE:
        checks["p99_ms"] = _check(
            result["p99_ms"] < INGRESS_P99_TARGET_MS,
            f"{result['p99_ms']} < {INGRESS_P99_TARGET_MS} ms at {result['latency_rate']}/s",
        )
    return checks
