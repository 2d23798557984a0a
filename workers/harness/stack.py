"""The process supervisor: the execq processes of a test run, a demo, chaos or bench run.

``ManagedProcess`` is one child in its own process group (so a kill reaches the
threads and children it spawned) with its output in a log file. ``Stack`` starts
the simulator, workers, beat, Flower and the HTTP API as such children, each logging to
``<workdir>/<name>.log``, and calls a process *ready* only when an observable
state says so: the simulator and Flower answer HTTP, a worker answers a Celery
control ping, beat holds the RedBeat lock, the API answers ``/health``. There are no fixed sleeps; every wait
polls with a deadline (``workers.harness.polling``) and fails with the process's
log tail.

The children see ``os.environ`` overlaid with the ``env`` given to ``Stack``
(``DATABASE_URL``, ``REDIS_URL``, ``EXECQ_*``). ``start_simulator`` adds
``EXECQ_SIM_URL`` and ``EXECQ_SIM_WS_URL`` to that env so processes started after it
use them. ``start_streams`` starts the stream holder (``execq streams``) and calls it
ready once it shows its accounts' streams live.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import requests
from kombu.exceptions import OperationalError as KombuOperationalError

from workers.harness.polling import wait_for
from workers.harness.services import free_port
from workers.redis_keys import REDBEAT_PREFIX

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Seconds. A worker imports ccxt and the task modules before it answers a ping.
WORKER_READY_TIMEOUT_S = 60.0
HTTP_READY_TIMEOUT_S = 30.0
# RedBeat lock timeout is max(10 s, 5 sweep intervals); a stale lock from a
# killed beat must expire before a new beat can take over.
BEAT_READY_TIMEOUT_S = 90.0
# Seconds. A stream holder loads markets, connects, and reconciles each account first.
STREAMS_READY_TIMEOUT_S = 60.0
# Seconds between SIGTERM and SIGKILL. A worker's warm shutdown finishes its
# running tasks, which are bounded by the soft time limit.
STOP_TIMEOUT_S = 30.0
_POLL_S = 0.1
# What RedBeat uses when ``redbeat_lock_key`` is not configured (workers/app.py does not).
REDBEAT_LOCK_KEY = REDBEAT_PREFIX + ":lock"


SIMULATOR_COMMAND = (
    "{python}",
    "-m",
    "exchange_sim",
    "--host",
    "{host}",
    "--port",
    "{port}",
    "--ws-port",
    "{ws_port}",
)


class StackError(RuntimeError):
    """A process did not start or become ready; the message carries its log tail."""


@dataclass
class ManagedProcess:
    """One child process in its own process group.

    It runs with ``os.environ`` overlaid with ``env``, in ``cwd`` (None: this
    process's), and writes its output to ``log_path`` (appended; a temporary file
    when not given).
    """

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    terminating: bool = False

    def start(self) -> ManagedProcess:
        if self.log_path is None:
            with tempfile.NamedTemporaryFile(
                prefix=f"execq-{_safe_filename(self.name)}-", suffix=".log", delete=False
            ) as log:
                self.log_path = Path(log.name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.terminating = False
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
        """Send ``sig`` to the group and wait for the exit (SIGKILL after ``timeout_s``);
        returns the exit code."""
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

    def terminate(self) -> None:
        """Ask for a graceful stop (one SIGTERM: a second one would make a Celery worker's
        warm shutdown a cold one) without waiting; ``wait_stopped`` waits."""
        if self.alive and not self.terminating:
            self.signal_group(signal.SIGTERM)
            self.terminating = True

    def wait_stopped(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Wait for the exit after ``terminate``; SIGKILL after ``timeout_s``. Grandchildren
        that left the group leader's wait (a pool child) die with it. Returns the exit code."""
        if self.process is None:
            return None
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = self.kill(signal.SIGKILL, timeout_s)
        self.signal_group(signal.SIGKILL)
        return code

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (graceful), then SIGKILL after ``timeout_s``; returns the exit code."""
        self.terminate()
        return self.wait_stopped(timeout_s)

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_together(processes: Iterable[ManagedProcess], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop several processes side by side: every one gets its SIGTERM before any is waited
    for, so their warm shutdowns overlap."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait_stopped(timeout_s)


def _poll(ready: Callable[[], bool], process: ManagedProcess, timeout_s: float, what: str) -> None:
    """Return once ``ready()`` holds; raise StackError if the process exits or time runs out."""

    def exited() -> None:
        if not process.alive:
            raise StackError(
                f"{what} exited with {process.returncode}; log {process.log_path}:\n"
                f"{process.log_tail(30)}"
            )

    wait_for(
        ready,
        timeout_s,
        interval_s=_POLL_S,
        while_waiting=exited,
        error=lambda _: StackError(
            f"{what} not ready after {timeout_s:.0f}s; log {process.log_path}:\n"
            f"{process.log_tail(30)}"
        ),
    )


def _http_answers(url: str, accept: Sequence[int] = (200,)) -> bool:
    try:
        return requests.get(url, timeout=1).status_code in accept
    except requests.RequestException:
        return False


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _stream_accounts(env: dict[str, str]) -> list[Any]:
    """The accounts with streams a process with environment ``env`` configures."""
    from pydantic import TypeAdapter

    from workers.settings import ExchangeAccount, Settings
    from workers.streams.clients import stream_venue

    raw = env.get("EXECQ_ACCOUNTS")
    if raw:
        accounts = TypeAdapter(list[ExchangeAccount]).validate_json(raw)
    else:
        accounts = Settings.model_fields["accounts"].get_default(call_default_factory=True)
    return [account for account in accounts if stream_venue(account) is not None]


def streams_live(
    client: redis.Redis,
    accounts: Sequence[str],
    *,
    pid: int | None = None,
    since: datetime | None = None,
) -> bool:
    """Whether every account's private streams show ``live`` in ``STREAMS_STATE``: under
    the holder with ``pid`` when given, live since ``since`` (reconnected and reconciled
    after it) when given."""
    import json

    from workers.redis_keys import STREAMS_STATE, stream_field

    fields = [stream_field(a, s) for a in accounts for s in ("orders", "positions")]
    try:
        rows = client.hmget(STREAMS_STATE, fields) if fields else []
    except redis.RedisError:
        return False
    for row in rows:
        if row is None:
            return False
        state = json.loads(row)
        if state["state"] != "live":
            return False
        if pid is not None and not state["holder"].endswith(f":{pid}"):
            return False
        if since is not None and datetime.fromisoformat(state["since"]) < since:
            return False
    return True


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _redis_url(overlay: dict[str, str]) -> str:
    """The broker a process with ``os.environ`` overlaid with ``overlay`` uses."""
    env = {**os.environ, **overlay}
    return env.get("REDIS_URL") or env.get("EXECQ_REDIS_URL") or DEFAULT_REDIS_URL


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
    # The children's working directory; None: this process's.
    cwd: Path | None = None
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    _control: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = dict(self.env)
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    # --- plumbing ---------------------------------------------------------------------

    def child_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """What a child gets on top of ``os.environ``."""
        # Unbuffered so a log tail shows the last line written before a crash.
        return {**self.env, **(extra or {}), "PYTHONUNBUFFERED": "1"}

    @property
    def redis_url(self) -> str:
        return _redis_url(self.env)

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
            cwd=self.cwd,
        ).start()
        # Re-insert so stop() (reverse start order) stops it before what it depends on.
        self.processes.pop(name, None)
        self.processes[name] = process
        return process

    def _celery(self, *args: str) -> list[str]:
        return [self.python, "-m", "celery", "-A", self.celery_app, *args]

    def control_app(self, redis_url: str | None = None) -> Any:
        """A bare Celery app on the broker at ``redis_url`` (default: the stack's), for
        control commands only.

        Not ``workers.app``: that one read its settings when this process
        imported it, possibly before a private Redis existed.
        """
        url = redis_url or self.redis_url
        if url not in self._control:
            from celery import Celery

            control = Celery("execq-stack-control", broker=url, set_as_current=False)
            control.conf.update(accept_content=["json"], broker_connection_retry=False)
            self._control[url] = control
        return self._control[url]

    def ping(self, name: str, timeout_s: float = 0.5, broker: Any = None) -> bool:
        """Whether the worker ``name`` answers a control ping within ``timeout_s``, through
        ``broker`` (a Celery app) or else the broker the worker was started on."""
        node = nodename(name)
        if broker is None:
            process = self.processes.get(node)
            broker = self.control_app(_redis_url(process.env) if process is not None else None)
        try:
            replies = broker.control.ping(destination=[node], timeout=timeout_s)
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
        ws_port: int = 0,
    ) -> str:
        """Start the exchange simulator; return its base URL once ``ready_path`` answers 200
        and its stream port takes connections.

        ``command`` replaces ``python -m exchange_sim --host {host} --port {port}
        --ws-port {ws_port}``; ``{host}``, ``{port}``, ``{ws_port}`` and ``{python}`` in
        it are filled in (a command without ``{ws_port}`` serves no streams). The URL is
        set as ``EXECQ_SIM_URL``, and the stream URL as ``EXECQ_SIM_WS_URL``, for the
        processes started afterwards.
        """
        port = port or free_port()
        ws_port = ws_port or free_port()
        while ws_port == port:
            ws_port = free_port()
        template = list(command or [*SIMULATOR_COMMAND])
        streams = any("{ws_port}" in part for part in template)
        args = [
            part.format(python=self.python, host=host, port=port, ws_port=ws_port)
            for part in template
        ]
        process = self._spawn("sim", args)
        url = f"http://{host}:{port}"
        _poll(lambda: _http_answers(url + ready_path), process, timeout_s, "simulator")
        self.env["EXECQ_SIM_URL"] = url
        if streams:
            _poll(lambda: _port_open(host, ws_port), process, timeout_s, "simulator streams")
            self.env["EXECQ_SIM_WS_URL"] = f"ws://{host}:{ws_port}"
        return url

    # --- the stream holder --------------------------------------------------------------

    def start_streams(
        self,
        name: str = "streams",
        accounts: Sequence[str] = (),
        extra_env: dict[str, str] | None = None,
        standby: bool = False,
        timeout_s: float = STREAMS_READY_TIMEOUT_S,
    ) -> ManagedProcess:
        """Start ``execq streams`` (``--account`` for each of ``accounts``; all when empty).

        Returns once the process holds the lease of every account with streams it was
        given, i.e. ``STREAMS_STATE`` shows their ``orders`` and ``positions`` streams
        ``live`` under its holder id. ``standby=True``: another holder has the leases;
        return as soon as the process is started.
        """
        args = [self.python, "-m", "workers.cli", "streams"]
        for account in accounts:
            args += ["--account", account]
        process = self._spawn(name, args, extra_env)
        if standby:
            return process
        env = {**os.environ, **process.env}
        expected = [a.name for a in _stream_accounts(env) if not accounts or a.name in accounts]
        client = redis.Redis.from_url(
            _redis_url(process.env), socket_timeout=2, socket_connect_timeout=2
        )
        try:
            _poll(
                lambda: streams_live(client, expected, pid=process.pid),
                process,
                timeout_s,
                f"stream holder {name}",
            )
        finally:
            client.close()
        return process

    # --- workers ------------------------------------------------------------------------

    def spawn_worker(
        self,
        name: str,
        concurrency: int = 8,
        pool: str = "threads",
        loglevel: str = "INFO",
        extra_env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        """Start ``celery worker`` as node ``name@localhost`` without waiting for it, so several
        can boot side by side (``wait_ready``)."""
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
        return self._spawn(node, args, extra_env)

    def wait_ready(
        self,
        *workers: ManagedProcess,
        broker: Any = None,
        timeout_s: float = WORKER_READY_TIMEOUT_S,
    ) -> None:
        """Return once each worker answers a control ping (through ``broker``, a Celery app,
        when given); StackError with its log tail if one exits or stays silent."""
        for worker in workers:
            _poll(
                lambda node=worker.name: self.ping(node, broker=broker),
                worker,
                timeout_s,
                f"worker {worker.name}",
            )

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
        process = self.spawn_worker(name, concurrency, pool, loglevel, extra_env)
        self.wait_ready(process, timeout_s=timeout_s)
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
        new = ManagedProcess(
            name=old.name, args=old.args, env=old.env, log_path=old.log_path, cwd=old.cwd
        )
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

    # --- the HTTP API -------------------------------------------------------------------

    def start_api(
        self,
        port: int = 0,
        name: str = "api",
        extra_env: dict[str, str] | None = None,
        timeout_s: float = HTTP_READY_TIMEOUT_S,
    ) -> str:
        """Start ``execq api`` on 127.0.0.1; return its URL once ``/health`` answers."""
        port = port or free_port()
        args = [self.python, "-m", "workers.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
        process = self._spawn(name, args, extra_env)
        url = f"http://127.0.0.1:{port}"
        _poll(lambda: _http_answers(f"{url}/health"), process, timeout_s, name)
        return url

    # --- shutdown -----------------------------------------------------------------------

    def log_tail(self, name: str, lines: int = 60) -> str:
        process = self.processes.get(name) or self.processes.get(nodename(name))
        return process.log_tail(lines) if process is not None else ""

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every process this stack started: workers, beat and Flower side by side,
        then the simulator (a worker's warm shutdown may still be talking to it)."""
        simulator = self.processes.get("sim")
        stop_together(
            (process for process in self.processes.values() if process is not simulator),
            timeout_s,
        )
        if simulator is not None:
            simulator.stop(timeout_s)
        for control in self._control.values():
            control.close()
        self._control.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
