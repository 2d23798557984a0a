"""The execq processes of a demo, chaos or bench run: simulator, workers, beat, Flower.

Each process runs in its own process group (so a kill reaches the threads and
children it spawned), logs to ``<workdir>/<name>.log``, and is *ready* only
when an observable state says so: the simulator and Flower answer HTTP, a
worker answers a Celery control ping, beat holds the RedBeat lock. There are
no fixed sleeps; every wait polls with a deadline and fails with the process's
log tail.

The children see ``os.environ`` overlaid with the ``env`` given to ``Stack``
(``DATABASE_URL``, ``REDIS_URL``, ``EXECQ_*``). ``start_simulator`` adds
``EXECQ_SIM_URL`` to that env so processes started after it use it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import requests
from kombu.exceptions import OperationalError as KombuOperationalError

from workers.harness.services import free_port
from workers.redis_keys import REDBEAT_PREFIX

ROOT = Path(__file__).resolve().parents[2]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Seconds. A worker imports ccxt and the task modules before it answers a ping.
WORKER_READY_TIMEOUT_S = 60.0
HTTP_READY_TIMEOUT_S = 30.0
# RedBeat lock timeout is max(10 s, 5 sweep intervals); a stale lock from a
# killed beat must expire before a new beat can take over.
BEAT_READY_TIMEOUT_S = 90.0
# Seconds between SIGTERM and SIGKILL. A worker's warm shutdown finishes its
# running tasks, which are bounded by the soft time limit.
STOP_TIMEOUT_S = 30.0
_POLL_S = 0.1
# What RedBeat uses when ``redbeat_lock_key`` is not configured (workers/app.py does not).
REDBEAT_LOCK_KEY = REDBEAT_PREFIX + ":lock"


class StackError(RuntimeError):
    """A process did not start or become ready; the message carries its log tail."""


@dataclass
class ManagedProcess:
    """One child process in its own process group, logging to ``log_path`` (appended)."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = ROOT
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            # Already gone (and reaped by a concurrent wait): nothing to signal.
            return

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Send ``sig`` to the group and wait for the exit; returns the exit code."""
        if not self.alive:
            return self.returncode
        assert self.process is not None
        self.signal_group(sig)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            if sig == signal.SIGKILL:
                raise
            return self.kill(signal.SIGKILL, timeout_s)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (graceful), then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.process is None:
            return None
        code = self.kill(signal.SIGTERM, timeout_s)
        # Grandchildren that left the group leader's wait (e.g. a pool child) die with it.
        self.signal_group(signal.SIGKILL)
        return code

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _poll(ready: Callable[[], bool], process: ManagedProcess, timeout_s: float, what: str) -> None:
    """Return once ``ready()`` holds; raise StackError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if ready():
            return
        if not process.alive:
            raise StackError(
                f"{what} exited with {process.returncode}; log {process.log_path}:\n"
                f"{process.log_tail(30)}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{what} not ready after {timeout_s:.0f}s; log {process.log_path}:\n"
                f"{process.log_tail(30)}"
            )
        time.sleep(_POLL_S)


def _http_answers(url: str, accept: Sequence[int] = (200,)) -> bool:
    try:
        return requests.get(url, timeout=1).status_code in accept
    except requests.RequestException:
        return False


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def nodename(name: str) -> str:
    """The Celery node name for a worker: ``name@localhost`` unless it already has a host."""
    return name if "@" in name else f"{name}@localhost"


@dataclass
class Stack:
    """Starts and stops the execq processes; use as a context manager."""

    env: dict[str, str]
    workdir: Path
    python: str = sys.executable
    # The ``-A`` argument: tests pass a stand-in app module; everything else uses execq's.
    celery_app: str = "workers"
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    _control: Any = None

    def __post_init__(self) -> None:
        self.env = dict(self.env)
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    # --- plumbing ---------------------------------------------------------------------

    def child_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # Unbuffered so a log tail shows the last line written before a crash.
        return {**os.environ, **self.env, **(extra or {}), "PYTHONUNBUFFERED": "1"}

    @property
    def redis_url(self) -> str:
        env = self.child_env()
        return env.get("REDIS_URL") or env.get("EXECQ_REDIS_URL") or DEFAULT_REDIS_URL

    def _spawn(
        self, name: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> ManagedProcess:
        existing = self.processes.get(name)
        if existing is not None and existing.alive:
            raise StackError(f"{name} is already running (pid {existing.pid})")
        process = ManagedProcess(
            name=name,
            args=args,
            env=self.child_env(extra_env),
            log_path=self.workdir / f"{_safe_filename(name)}.log",
        ).start()
        # Re-insert so stop() (reverse start order) stops it before what it depends on.
        self.processes.pop(name, None)
        self.processes[name] = process
        return process

    def _celery(self, *args: str) -> list[str]:
        return [self.python, "-m", "celery", "-A", self.celery_app, *args]

    def control_app(self) -> Any:
        """A bare Celery app on the stack's broker, for control pings only.

        Not ``workers.app``: that one read its settings when this process
        imported it, possibly before a private Redis existed.
        """
        if self._control is None:
            from celery import Celery

            self._control = Celery(
                "execq-stack-control", broker=self.redis_url, set_as_current=False
            )
            self._control.conf.update(accept_content=["json"], broker_connection_retry=False)
        return self._control

    def ping(self, name: str, timeout_s: float = 0.5) -> bool:
        """Whether the worker ``name`` answers a control ping within ``timeout_s``."""
        node = nodename(name)
        try:
            replies = self.control_app().control.ping(destination=[node], timeout=timeout_s)
        except (KombuOperationalError, redis.RedisError, OSError):
            # Broker restarting (chaos): not ready yet, ask again.
            return False
        return any(node in reply for reply in replies)

    # --- the simulator ------------------------------------------------------------------

    def start_simulator(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        command: Sequence[str] | None = None,
        ready_path: str = "/_sim/positions",
        timeout_s: float = HTTP_READY_TIMEOUT_S,
    ) -> str:
        """Start the exchange simulator; return its base URL once ``ready_path`` answers 200.

        ``command`` replaces ``python -m exchange_sim --host {host} --port {port}``;
        ``{host}``, ``{port}`` and ``{python}`` in it are filled in. The URL is
        also set as ``EXECQ_SIM_URL`` for the processes started afterwards.
        """
        port = port or free_port()
        template = list(
            command or ["{python}", "-m", "exchange_sim", "--host", "{host}", "--port", "{port}"]
        )
        args = [part.format(python=self.python, host=host, port=port) for part in template]
        process = self._spawn("sim", args)
        url = f"http://{host}:{port}"
        _poll(lambda: _http_answers(url + ready_path), process, timeout_s, "simulator")
        self.env["EXECQ_SIM_URL"] = url
        return url

    # --- workers ------------------------------------------------------------------------

    def start_worker(
        self,
        name: str,
        concurrency: int = 8,
        pool: str = "threads",
        loglevel: str = "INFO",
        extra_env: dict[str, str] | None = None,
        timeout_s: float = WORKER_READY_TIMEOUT_S,
    ) -> ManagedProcess:
        """Start ``celery worker`` as node ``name@localhost``; return once it answers a ping."""
        node = nodename(name)
        args = self._celery(
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            node,
            "--without-mingle",
            "--without-gossip",
            "-l",
            loglevel,
        )
        process = self._spawn(node, args, extra_env)
        _poll(lambda: self.ping(node), process, timeout_s, f"worker {node}")
        return process

    def worker(self, name: str) -> ManagedProcess:
        try:
            return self.processes[nodename(name)]
        except KeyError:
            raise StackError(f"no worker {nodename(name)} in this stack") from None

    def kill_worker(self, name: str, sig: int = signal.SIGKILL) -> int | None:
        """Signal the worker's process group and wait for it to exit; returns the exit code."""
        return self.worker(name).kill(sig)

    def restart_worker(
        self, name: str, timeout_s: float = WORKER_READY_TIMEOUT_S
    ) -> ManagedProcess:
        """Start the worker again with the same arguments (stopping it first if alive)."""
        old = self.worker(name)
        if old.alive:
            old.stop()
        new = ManagedProcess(name=old.name, args=old.args, env=old.env, log_path=old.log_path)
        new.restarts = old.restarts + 1
        new.start()
        self.processes[old.name] = new
        _poll(lambda: self.ping(old.name), new, timeout_s, f"worker {old.name}")
        return new

    # --- beat and Flower ----------------------------------------------------------------

    def start_beat(
        self, loglevel: str = "INFO", timeout_s: float = BEAT_READY_TIMEOUT_S
    ) -> ManagedProcess:
        """Start ``celery beat`` (RedBeat); return once it holds the scheduler lock.

        Readiness is a *new* lock token: a lock left by a killed beat must
        expire first, and a second live beat would only stand by.
        """
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            before = client.get(REDBEAT_LOCK_KEY)
            process = self._spawn("beat", self._celery("beat", "-l", loglevel))

            def holds_lock() -> bool:
                try:
                    token = client.get(REDBEAT_LOCK_KEY)
                except redis.RedisError:
                    return False
                return token is not None and token != before

            _poll(holds_lock, process, timeout_s, "beat (waiting for the RedBeat lock)")
        finally:
            client.close()
        return process

    def start_flower(self, port: int = 0, timeout_s: float = HTTP_READY_TIMEOUT_S) -> str:
        """Start Flower on 127.0.0.1; return its URL once ``/healthcheck`` answers.

        Without ``FLOWER_BASIC_AUTH`` in the env it runs with ``--insecure-local``
        (no authentication, which execq's Flower allows on 127.0.0.1 only).
        401 counts as up: with ``FLOWER_BASIC_AUTH`` set every page needs credentials.
        """
        port = port or free_port()
        args = self._celery("flower", f"--port={port}", "--address=127.0.0.1")
        if not self.child_env().get("FLOWER_BASIC_AUTH"):
            args.append("--insecure-local")
        process = self._spawn("flower", args)
        url = f"http://127.0.0.1:{port}"
        _poll(
            lambda: _http_answers(f"{url}/healthcheck", accept=(200, 401)),
            process,
            timeout_s,
            "flower",
        )
        return url

    # --- shutdown -----------------------------------------------------------------------

    def log_tail(self, name: str, lines: int = 60) -> str:
        process = self.processes.get(name) or self.processes.get(nodename(name))
        return process.log_tail(lines) if process is not None else ""

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every process this stack started, newest first (workers before the simulator)."""
        for process in reversed(list(self.processes.values())):
            process.stop(timeout_s)
        if self._control is not None:
            self._control.close()
            self._control = None

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
