"""``ensure_services`` starts or reuses Redis/Postgres; ``Stack`` runs and kills execq processes.

The Stack tests use stand-ins (a tiny Celery app, ``python -m http.server`` as
the simulator) so they exercise process management alone, independent of the
task modules and simulator that change under them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
import requests

from tests.conftest import ADMIN_DATABASE_URL, TEST_REDIS_URL, free_port
from workers.harness import services as services_module
from workers.harness.services import COMPOSE_HINT, ServicesUnavailable, ensure_services, libpq_url
from workers.harness.stack import REDBEAT_LOCK_KEY, Stack, StackError

pytestmark = pytest.mark.services

SVC_DATABASE = f"execq_svc_{os.getpid()}"


def _database_exists(name: str) -> bool:
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        row = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


@pytest.fixture
def throwaway_database() -> Iterator[str]:
    """The name of a database that does not exist yet; dropped after the test."""
    drop = f'DROP DATABASE IF EXISTS "{SVC_DATABASE}" WITH (FORCE)'
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(drop)
    yield SVC_DATABASE
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(drop)


def _local_database_url(name: str) -> str:
    base = ADMIN_DATABASE_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}"


# --- ensure_services ----------------------------------------------------------------------


def test_reuses_the_running_services_and_creates_only_the_configured_database(
    throwaway_database: str, redis_server: str, tmp_path: Path
) -> None:
    database_url = _local_database_url(throwaway_database)
    assert not _database_exists(throwaway_database)

    with ensure_services(redis_server, database_url, tmp_path / "svc") as services:
        # The configured URLs come back unchanged and nothing was started.
        assert services.started == []
        assert services.redis_url == redis_server
        assert services.database_url == database_url
        # The missing database was created on the configured server.
        assert _database_exists(throwaway_database)
        with psycopg.connect(libpq_url(services.database_url)) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == (
                throwaway_database,
            )
        # Chaos must not restart someone else's server.
        with pytest.raises(RuntimeError, match="not started by ensure_services"):
            services.restart_redis()
        with pytest.raises(RuntimeError, match="not started by ensure_services"):
            services.restart_postgres()

    # Stopping leaves configured services and their data alone.
    assert _database_exists(throwaway_database)
    assert redis.Redis.from_url(redis_server).ping()
    assert not (tmp_path / "svc").exists(), "nothing private was created"


def test_a_run_without_a_redis_url_gets_a_private_redis_server_of_its_own(
    throwaway_database: str, redis_server: str, tmp_path: Path
) -> None:
    database_url = _local_database_url(throwaway_database)
    with ensure_services(None, database_url, tmp_path / "svc") as services:
        assert services.started == ["redis"]
        assert services.notes == []
        assert services.redis_url != redis_server
        client = redis.Redis.from_url(services.redis_url)
        client.set("private", "yes")
        # Not the test run's server: its keys are not here.
        assert redis.Redis.from_url(redis_server).get("private") is None
        client.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(services.redis_url, socket_connect_timeout=1).ping()
    assert not (tmp_path / "svc" / "redis").exists()


def test_starts_private_redis_and_postgres_when_the_configured_ones_are_unreachable(
    tmp_path: Path,
) -> None:
    """SLOW-ISH (about 3 s): initdb plus a real postgres and redis-server on free ports.

    The configured URLs point at closed ports, as on a machine with nothing running.
    """
    closed_redis = f"redis://127.0.0.1:{free_port()}/4"
    closed_postgres = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/execq"

    services = ensure_services(closed_redis, closed_postgres, tmp_path / "svc")
    try:
        assert sorted(services.started) == ["postgres", "redis"]
        assert services.redis_url != closed_redis
        assert services.redis_url.endswith("/4"), "the configured Redis db number is kept"
        assert services.database_url.startswith("postgresql+psycopg://")
        assert len(services.notes) == 2 and all("private" in note for note in services.notes)

        # Both answer, and Postgres has the configured database name.
        client = redis.Redis.from_url(services.redis_url)
        assert client.ping()
        with psycopg.connect(libpq_url(services.database_url), autocommit=True) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == ("execq",)
            connection.execute("CREATE TABLE acknowledged (id int)")
            connection.execute("INSERT INTO acknowledged VALUES (1)")
        client.set("kept", "yes")

        # Restarts come back on the same URLs; committed rows and (saved) keys survive.
        services.restart_postgres(mode="immediate")
        with psycopg.connect(libpq_url(services.database_url)) as connection:
            assert connection.execute("SELECT id FROM acknowledged").fetchall() == [(1,)]
        services.restart_redis()
        assert client.get("kept") == b"yes"
        services.restart_redis(keep_data=False)
        assert client.get("kept") is None
        client.close()
        private_dirs = list(services._owned_dirs)
        assert private_dirs and all(directory.exists() for directory in private_dirs)
    finally:
        services.stop()

    # Gone: the ports refuse connections and the private files are deleted.
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(services.redis_url, socket_connect_timeout=1).ping()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(libpq_url(services.database_url), connect_timeout=1)
    assert not any(directory.exists() for directory in private_dirs)


def test_says_the_compose_line_when_nothing_can_be_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services_module, "find_binary", lambda name: None)
    closed_redis = f"redis://127.0.0.1:{free_port()}/0"
    closed_postgres = f"postgresql://postgres@127.0.0.1:{free_port()}/execq"

    with pytest.raises(ServicesUnavailable) as raised:
        ensure_services(closed_redis, closed_postgres, tmp_path)

    message = str(raised.value)
    assert message.startswith(COMPOSE_HINT)
    assert "\n" not in message
    assert "no redis-server on PATH" in message and "no initdb/postgres" in message


# --- Stack --------------------------------------------------------------------------------

STANDIN_APP = """
import os
from celery import Celery

app = Celery("standin", broker=os.environ["REDIS_URL"])
app.conf.update(
    beat_scheduler="redbeat.RedBeatScheduler",
    redbeat_redis_url=os.environ["REDIS_URL"],
    redbeat_key_prefix="execq:redbeat:",
    beat_max_loop_interval=1,
    worker_hijack_root_logger=False,
)
"""


@pytest.fixture
def stack(tmp_path: Path, redis_server: str) -> Iterator[Stack]:
    """A Stack whose Celery app is a stand-in module, on the test Redis database."""
    (tmp_path / "standin_app.py").write_text(STANDIN_APP)
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    with Stack(
        {"REDIS_URL": redis_server, "PYTHONPATH": pythonpath},
        tmp_path / "run",
        celery_app="standin_app",
    ) as running:
        yield running


def _standin_simulator(stack: Stack) -> str:
    return stack.start_simulator(
        command=["{python}", "-m", "http.server", "{port}", "--bind", "{host}"],
        ready_path="/",
    )


def test_worker_survives_sigkill_and_restart(stack: Stack) -> None:
    sim_url = _standin_simulator(stack)
    assert requests.get(sim_url, timeout=5).ok
    assert stack.env["EXECQ_SIM_URL"] == sim_url, "later processes are pointed at the simulator"

    worker = stack.start_worker("stack-probe", concurrency=2)
    assert stack.ping("stack-probe")
    assert worker.env["EXECQ_SIM_URL"] == sim_url

    # SIGKILL: the process is gone at once and no longer answers.
    assert stack.kill_worker("stack-probe") == -signal.SIGKILL
    assert not worker.alive
    assert not stack.ping("stack-probe")

    restarted = stack.restart_worker("stack-probe")
    assert restarted.alive and restarted.pid != worker.pid
    assert restarted.restarts == 1
    assert stack.ping("stack-probe")
    assert "stack-probe@localhost ready" in stack.log_tail("stack-probe", 200)

    stack.stop()
    assert not restarted.alive
    assert not stack.processes["sim"].alive


def test_beat_takes_the_redbeat_lock_and_flower_answers(stack: Stack) -> None:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.delete(REDBEAT_LOCK_KEY)

    stack.start_worker("stack-flower-probe", concurrency=1)
    beat = stack.start_beat()
    assert client.get(REDBEAT_LOCK_KEY) is not None
    flower_url = stack.start_flower()
    assert requests.get(f"{flower_url}/healthcheck", timeout=5).text == "OK"

    stack.stop()
    assert not beat.alive and not stack.processes["flower"].alive
    # A beat stopped gracefully hands the lock back, so the next one starts at once.
    assert client.get(REDBEAT_LOCK_KEY) is None
    client.close()


def test_a_worker_that_cannot_start_fails_with_its_log(stack: Stack) -> None:
    stack.celery_app = "no_such_module_for_execq"
    with pytest.raises(StackError, match="exited with") as raised:
        stack.start_worker("stack-broken", timeout_s=30)
    assert "no_such_module_for_execq" in str(raised.value)
