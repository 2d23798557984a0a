"""Shared fixtures: a private Postgres database, a private Redis server, the exchange
simulator and real Celery workers as subprocesses.

Nothing here touches a user's data: the database is ``execq_test_<pid>``
(created and dropped here) and Redis is a ``redis-server`` this process starts on a
free port and stops at exit. Under pytest-xdist each worker process is a run of its
own: its own database (its pid), its own Redis server, its own simulator and ports
(``free_port``), so two suites (two checkouts) can run side by side.

The processes are started by the harness's supervisor (``workers.harness.stack``),
``wait_for`` is the harness's polling helper and ``sim`` its simulator client, so
tests, demo, bench and chaos start, wait for and talk to processes the same way.

The environment is set at import time because ``workers.app`` reads settings
once per process; the worker subprocesses inherit it.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from workers.harness.polling import wait_for
from workers.harness.sim_client import SimulatorClient
from workers.harness.stack import ManagedProcess, Stack, stop_together

__all__ = ["KILLED_WORKER_ENV", "ManagedProcess", "SimulatorClient", "wait_for"]

ROOT = Path(__file__).resolve().parents[1]
ADMIN_DATABASE_URL = os.environ.get(
    "EXECQ_TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# pytest-xdist's worker gwN is 0, 1, ...; a run without xdist is worker 0.
WORKER_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)

# This test process's own files: its Redis server's and its processes' logs (deleted at exit).
RUN_DIR = Path(tempfile.mkdtemp(prefix="execq-test-"))
atexit.register(shutil.rmtree, RUN_DIR, ignore_errors=True)


def _start_private_redis() -> str:
    """A redis-server of this test process's own: no other run (another checkout's suite,
    a demo, a user's data) shares it, and it dies with this process."""
    from workers.harness.services import start_private_redis

    server = start_private_redis(RUN_DIR, die_with_parent=True)
    atexit.register(server.stop)
    return server.url


TEST_DATABASE = f"execq_test_{os.getpid()}"
TEST_REDIS_URL = _start_private_redis()


def _database_url(name: str) -> str:
    base = ADMIN_DATABASE_URL.rsplit("/", 1)[0]
    return f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)


def _port_candidates() -> Iterator[int]:
    """Ports for the run's servers: below the kernel's ephemeral range, so no outgoing
    connection takes one between its choice and its bind, and a block per xdist worker,
    so two workers of a run never choose the same one."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    first, size = 10000, 100
    blocks = (ephemeral_low - first) // size
    if blocks < 16:
        return iter(())
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
    block = (zlib.crc32(run.encode()) + WORKER_INDEX) % blocks
    return (first + block * size + offset for offset in itertools.cycle(range(size)))


_PORTS = _port_candidates()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port no process listens on now, for one of the run's servers to bind."""
    for port in itertools.islice(_PORTS, 100):
        if _bindable(port):
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SIM_PORT = free_port()
SIM_WS_PORT = free_port()

os.environ.update(
    {
        "DATABASE_URL": _database_url(TEST_DATABASE),
        "REDIS_URL": TEST_REDIS_URL,
        "EXECQ_SIM_URL": f"http://127.0.0.1:{SIM_PORT}",
        "EXECQ_SIM_WS_URL": f"ws://127.0.0.1:{SIM_WS_PORT}",
        # Compressed time and short windows so tests finish in seconds.
        "EXECQ_VISIBILITY_TIMEOUT_S": os.environ.get("EXECQ_VISIBILITY_TIMEOUT_S", "60"),
        "EXECQ_TASK_SOFT_TIME_LIMIT_S": "15",
        "EXECQ_TASK_HARD_TIME_LIMIT_S": "25",
        # The simulator's hang faults last 1.5 s: a 1 s client timeout sees them as timeouts.
        "EXECQ_EXCHANGE_TIMEOUT_MS": "1000",
        "EXECQ_RETRY__LOOKUP_BASE_S": "0.25",
        "EXECQ_VERIFY_BUDGET_S": "8",
        "EXECQ_FLAT_CHECK_BUDGET_S": "5",
        # Tests that want the start-up recovery sweep turn it on themselves.
        "EXECQ_RECOVER_ON_WORKER_START": "false",
        "EXECQ_RETRY__RATE_LIMITED__BASE_S": "0.2",
        "EXECQ_RETRY__RATE_LIMITED__CAP_S": "1",
        "EXECQ_RETRY__TRANSIENT__BASE_S": "0.1",
        "EXECQ_RETRY__TRANSIENT__CAP_S": "0.5",
        "EXECQ_RETRY__UNKNOWN__BASE_S": "0.1",
        "EXECQ_RETRY__UNKNOWN__CAP_S": "0.5",
        "EXECQ_RECOVERY_STUCK_AFTER_S": "2",
    }
)


# For a worker the test will SIGKILL mid-order: a shorter run budget makes the order
# lock it leaves behind expire after 9 s instead of 15 s (``Settings.order_lock_ttl_s``),
# so the recovery sweep can take the order over sooner.
KILLED_WORKER_ENV = {"EXECQ_TASK_SOFT_TIME_LIMIT_S": "5"}

# The slowest files, slowest first (measured; see DEVELOPERS.md). Under pytest-xdist
# (``--dist loadfile``) each file runs in one worker process and files are handed
# out in collection order: the long ones start first and the short ones fill in.
SLOWEST_FILES = (
    "integration/test_chaos.py",
    "integration/test_aged.py",
    "integration/test_recovery.py",
    "integration/test_cli.py",
    "integration/test_chaos_faults.py",
    "integration/test_orders.py",
    "integration/test_demo.py",
    "integration/test_bench.py",
    "integration/test_foundation.py",
    "integration/test_services.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return SLOWEST_FILES.index(path) if path in SLOWEST_FILES else len(SLOWEST_FILES)

    items.sort(key=rank)  # stable: a file's tests keep their order


def cid_of(signal_id: str, leg: str = "open") -> str:
    """The client order id execq derives for a signal's leg."""
    from workers.execution.client_ids import client_order_id

    return client_order_id(signal_id, leg)


def order_of(client_order_id: str) -> Any:
    """The stored order (a snapshot), or None."""
    from workers.store.orders import load_order

    return load_order(client_order_id)


def book_size(account: str, symbol: str) -> Decimal:
    """The size of the book's open position on ``account`` and ``symbol`` (0 without one)."""
    from sqlalchemy import select

    from workers.store.db import session_scope
    from workers.store.models import Position

    with session_scope() as session:
        row = session.scalars(
            select(Position).where(
                Position.account == account, Position.symbol == symbol, Position.status == "open"
            )
        ).one_or_none()
        return Decimal(0) if row is None else row.size


def stored_order(client_id: str, status: str, booked: str = "0", **columns: Any) -> Any:
    """An ``orders`` row set up by hand (a 0.01 BTC binance buy, ``booked`` filled and
    booked), for tests that start from a given state; ``columns`` override."""
    from workers.store.models import Order

    values: dict[str, Any] = {
        "client_order_id": client_id,
        "signal_id": client_id,
        "leg": "open",
        "account": "binance",
        "symbol": "BTC/USDT:USDT",
        "side": "buy",
        "order_type": "market",
        "amount": Decimal("0.01"),
        "purpose": "open",
        "status": status,
        "filled": Decimal(booked),
        "booked_filled": Decimal(booked),
    }
    return Order(**(values | columns))


def store_fill(client_id: str, side: str, amount: str, price: str, purpose: str = "open") -> None:
    """A filled, not yet booked binance BTC order of ``amount`` at ``price``, committed."""
    from workers.store.db import session_scope

    with session_scope() as session:
        session.add(
            stored_order(
                client_id,
                "filled",
                side=side,
                amount=Decimal(amount),
                filled=Decimal(amount),
                average_price=Decimal(price),
                purpose=purpose,
            )
        )


def stored_aged_episode(position_id: int, status: str, **columns: Any) -> Any:
    """An ``aged_positions`` row set up by hand (grace phase, detected now)."""
    from workers.store.models import AgedPosition

    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "position_id": position_id,
        "status": status,
        "phase": "grace",
        "detected_at": now,
        "phase_changed_at": now,
        "loss_tolerance_percent": Decimal(0),
        "extra_tolerance_percent": Decimal(0),
        "config": {},
    }
    return AgedPosition(**(values | columns))


# --- Postgres -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """A fresh, migrated database for this test run, dropped afterwards."""
    import psycopg
    from alembic import command

    from workers.store.migrate import alembic_config

    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{TEST_DATABASE}"')
    command.upgrade(alembic_config(), "head")
    yield os.environ["DATABASE_URL"]
    from workers.store.db import dispose_engine

    dispose_engine()
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}" WITH (FORCE)')


@pytest.fixture
def db(database: str) -> Iterator[None]:
    """Empty tables before the test (the schema stays)."""
    from workers.store.db import truncate_all

    truncate_all()
    yield


# --- Redis ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def redis_clean(redis_server: str) -> Iterator[None]:
    """Drop execq's coordination keys (locks, kill switch, limiter); the broker queues stay."""
    from workers.redis_client import get_redis

    client = get_redis()
    keys = list(client.scan_iter(match="execq:*", count=1000))
    keys = [key for key in keys if not key.startswith("execq:redbeat")]
    if keys:
        client.delete(*keys)
    yield


# --- processes ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def process_stack() -> Iterator[Stack]:
    """The test run's process supervisor: the simulator and every worker the fixtures start,
    logging under ``RUN_DIR``, all stopped at the end of the run."""
    with Stack(env={}, workdir=RUN_DIR / "logs", cwd=ROOT) as stack:
        yield stack


@pytest.fixture(scope="session")
def simulator_process(process_stack: Stack) -> ManagedProcess:
    process_stack.start_simulator(port=SIM_PORT, ws_port=SIM_WS_PORT)
    return process_stack.processes["sim"]


@pytest.fixture
def sim(simulator_process: ManagedProcess) -> SimulatorClient:
    """The simulator, reset to its initial state (no faults, default prices)."""
    client = SimulatorClient(os.environ["EXECQ_SIM_URL"], timeout_s=10)
    client.reset()
    return client


# --- the stream holder ----------------------------------------------------------------

# Short windows so a stale socket, a reconnect or a takeover shows within seconds.
STREAMS_TEST_ENV = {
    "EXECQ_STREAMS__STALE_AFTER_S": "3",
    "EXECQ_STREAMS__LEASE_TTL_S": "3",
    "EXECQ_STREAMS__RECONNECT_BASE_S": "0.2",
    "EXECQ_STREAMS__RECONNECT_CAP_S": "1",
    "EXECQ_STREAMS__TARGETS_REFRESH_S": "0.5",
}


# Holder names are unique across the run, so is each one's log.
_HOLDER_NUMBERS = itertools.count(1)


class StreamHolders:
    """``execq streams`` processes on the run's ``Stack``, stopped after the test."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.started: list[ManagedProcess] = []

    def start(
        self,
        standby: bool = False,
        accounts: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        """Start a holder; return once its accounts' streams are live (``standby``: at once)."""
        process = self.stack.start_streams(
            name=f"streams-{next(_HOLDER_NUMBERS)}",
            accounts=accounts,
            extra_env={**STREAMS_TEST_ENV, **(env or {})},
            standby=standby,
        )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        stop_together(self.started, timeout_s=15)
        self.started.clear()


@pytest.fixture
def stream_holders(
    sim: SimulatorClient, db: None, redis_clean: None, process_stack: Stack
) -> Iterator[StreamHolders]:
    """Start stream holders with ``stream_holders.start()`` (on a reset simulator, clean
    tables and keys); all are stopped after the test."""
    holders = StreamHolders(process_stack)
    yield holders
    holders.stop_all()


# --- Celery workers -------------------------------------------------------------------

# Node names are unique across the run: every pool starts its workers on one Stack.
_NODE_NUMBERS = itertools.count(1)


class WorkerPool:
    """Real ``celery -A workers worker`` subprocesses against the test Redis/Postgres,
    started on the run's ``Stack`` and stopped as a group."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.workers: dict[str, ManagedProcess] = {}

    def start(self, concurrency: int = 8, env: dict[str, str] | None = None) -> ManagedProcess:
        """Start a worker and wait until it answers a ping."""
        worker = self.spawn(concurrency, env)
        self.wait_ready(worker)
        return worker

    def spawn(self, concurrency: int = 8, env: dict[str, str] | None = None) -> ManagedProcess:
        """Start a worker without waiting: several can boot side by side (``wait_ready``)."""
        nodename = f"test{next(_NODE_NUMBERS)}-{os.getpid()}@localhost"
        worker = self.stack.spawn_worker(nodename, concurrency=concurrency, extra_env=env)
        self.workers[nodename] = worker
        return worker

    def wait_ready(self, *workers: ManagedProcess, broker: Any = None) -> None:
        """Wait until each worker answers a ping, through ``broker`` (a Celery app) when
        given, else through the broker each worker was started on."""
        self.stack.wait_ready(*workers, broker=broker, timeout_s=30)

    def stop_all(self) -> None:
        # Every worker gets SIGTERM first: their warm shutdowns run side by side.
        stop_together(self.workers.values(), timeout_s=15)
        self.workers.clear()


def reset_broker() -> None:
    """Drop queued tasks and the messages a killed worker left unacknowledged.

    kombu restores unacknowledged messages to the queue after the visibility
    timeout; left over from an earlier test they would run in the next one.
    """
    from workers.app import app
    from workers.redis_client import get_redis

    app.control.purge()
    get_redis().delete("unacked", "unacked_index", "unacked_mutex")


def wait_until_idle(nodename: str, timeout_s: float = 60) -> None:
    """Wait until no task is queued or running, so one test's tasks never touch the next."""
    from workers.app import app
    from workers.redis_client import get_redis

    # Addressed to the one worker, each inspect returns as soon as it replies.
    inspector = app.control.inspect(destination=[nodename], timeout=2.0)

    def idle() -> bool:
        if get_redis().llen("celery"):
            return False
        for ask in (inspector.active, inspector.reserved, inspector.scheduled):
            if any((ask() or {}).values()):
                return False
        return True

    wait_for(idle, timeout_s, interval_s=0.2, message="tasks still running after the test")


@pytest.fixture(scope="session")
def shared_worker(database: str, redis_server: str, process_stack: Stack) -> Iterator[WorkerPool]:
    pool = WorkerPool(process_stack)
    yield pool
    pool.stop_all()


@pytest.fixture
def workers(shared_worker: WorkerPool, process_stack: Stack) -> Iterator[WorkerPool]:
    """Start workers with ``workers.start()``; all are stopped after the test.

    The session's shared worker is stopped first, so only the test's own
    workers consume its tasks (it restarts when a later test needs it).
    """
    shared_worker.stop_all()
    reset_broker()
    pool = WorkerPool(process_stack)
    yield pool
    pool.stop_all()
    reset_broker()


@pytest.fixture
def worker(shared_worker: WorkerPool, db: None, redis_clean: None) -> Iterator[ManagedProcess]:
    """A running worker on clean state, shared by the session and drained after each test."""
    reset_broker()
    running = [w for w in shared_worker.workers.values() if w.alive]
    process = running[0] if running else shared_worker.start()
    yield process
    wait_until_idle(process.name)
