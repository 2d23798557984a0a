"""Redis and PostgreSQL for ``execq demo`` / ``chaos`` / ``bench``: private or given.

A scratch run isolates itself by a Redis server of its own: ``ensure_services``
without a Redis URL starts a *private* ``redis-server`` from the binary on the
PATH, on a free port, with its files under ``workdir`` (``start_private_redis``;
the test suite starts its own the same way). Given a Redis URL, it uses that one
if it answers. PostgreSQL is the configured server (only the configured database
is touched; it is created when the server is there but the database is not).

A given service that does not answer is replaced by a private server as well;
``Services.stop()`` stops every private server and deletes its files. Nothing
outside ``workdir`` is ever written, so existing data cannot be harmed.

PostgreSQL refuses to run as root. When this process is root, the private
cluster is initialised and run as an unprivileged system user (``postgres`` if
it exists, else ``nobody``) by ``subprocess.Popen(user=..., group=...)``: the
child drops privileges itself before ``exec``, so no ``su``/``runuser`` wrapper
sits between us and the postmaster and signals reach it directly.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from workers.harness.polling import wait_for
from workers.settings import redact_url

COMPOSE_HINT = "run: docker compose up -d redis postgres"

# Seconds. A local server answers a probe in milliseconds; a remote one that
# takes longer than this is not one we want the demo to depend on.
PROBE_TIMEOUT_S = 3.0
# Seconds for a private server to accept connections after spawn. initdb plus
# first start takes about 1.5 s here; the margin covers slow CI disks.
START_TIMEOUT_S = 60.0
# Seconds to wait after SIGTERM/SIGINT before SIGKILL.
STOP_TIMEOUT_S = 20.0
_POLL_S = 0.05
_NO_RETRY = Retry(NoBackoff(), 0)

# Unprivileged accounts PostgreSQL may run as when we are root, in preference order.
_PG_RUN_AS = ("postgres", "nobody")

ServiceName = Literal["redis", "postgres"]
ShutdownMode = Literal["fast", "immediate"]


class ServicesUnavailable(RuntimeError):
    """Neither the configured services nor private ones can be used.

    The message is one line, starting with the command that fixes it.
    """


class _StartFailed(RuntimeError):
    """A private server could not be started; the message says why."""


# --- probes of the configured services ---------------------------------------------


def _probe_redis(url: str) -> str | None:
    """None when Redis at ``url`` answers PING, else the reason it does not."""
    client = redis.Redis.from_url(
        url,
        socket_timeout=PROBE_TIMEOUT_S,
        socket_connect_timeout=PROBE_TIMEOUT_S,
        # redis-py retries a refused connection for ~4 s by default; a probe
        # must answer at once, and callers poll it themselves.
        retry=_NO_RETRY,
    )
    try:
        client.ping()
        return None
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


def libpq_url(database_url: str) -> str:
    """``postgresql+psycopg://...`` as plain libpq accepts it (SQLAlchemy's driver suffix dropped)."""
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(scheme="postgresql"))


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _database_name(url: str) -> str:
    name = urlsplit(url).path.lstrip("/")
    return name or "execq"


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(libpq_url(url), connect_timeout=int(PROBE_TIMEOUT_S), autocommit=True)


def _ensure_database(database_url: str) -> str | None:
    """Make sure the target database exists; None on success, else why it cannot be used.

    Connects to the target first (the common case needs no privileges beyond
    that). Only if that fails does it go to the server's ``postgres``
    maintenance database to create the target, and nothing else is touched.
    """
    try:
        with _connect(database_url):
            return None
    except psycopg.OperationalError as exc:
        first_error = _one_line(exc)
    target = _database_name(database_url)
    try:
        with _connect(_with_database(database_url, "postgres")) as admin:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (target,)
            ).fetchone()
            if exists is None:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
    except psycopg.OperationalError:
        # Server out of reach, or the maintenance database refuses us: the
        # target's own error ("does not exist", "refused") is the one to show.
        return first_error
    except psycopg.Error as exc:
        return f"{first_error}; creating it failed: {_one_line(exc)}"
    try:
        with _connect(database_url):
            return None
    except psycopg.OperationalError as exc:
        return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --- private servers --------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller binds it next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str) -> str | None:
    """``name`` on the PATH, else in Debian's versioned PostgreSQL directory (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
        reverse=True,
    )
    return candidates[0] if candidates else None


def _wait_until(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], timeout_s: float, log: Path
) -> None:
    """Poll ``ready`` until true; fail early if the process died (its log tail is the reason)."""

    def exited() -> None:
        if process.poll() is not None:
            raise _StartFailed(f"exited with {process.returncode}: {_tail(log)}")

    wait_for(
        ready,
        timeout_s,
        interval_s=_POLL_S,
        while_waiting=exited,
        error=lambda _: _StartFailed(f"not ready after {timeout_s:.0f}s: {_tail(log)}"),
    )


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def _terminate(process: subprocess.Popen[bytes], sig: int, timeout_s: float) -> None:
    """Send ``sig`` to the process group, SIGKILL it if it has not exited in ``timeout_s``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)
    except ProcessLookupError:
        process.wait(timeout=timeout_s)


@dataclass
class _RunAs:
    """Who runs PostgreSQL: ``None`` uid means "this process's user" (not root)."""

    uid: int | None = None
    gid: int | None = None
    name: str = ""

    @classmethod
    def for_postgres(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        for name in _PG_RUN_AS:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return cls(uid=entry.pw_uid, gid=entry.pw_gid, name=name)
        raise _StartFailed("running as root and no unprivileged user (postgres, nobody) exists")

    def popen_kwargs(self) -> dict[str, object]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def can_use(self, directory: Path) -> bool:
        """Whether this user can create files in ``directory`` (every ancestor traversable)."""
        if self.uid is None:
            return os.access(directory, os.W_OK | os.X_OK)
        probe = subprocess.run(
            ["test", "-w", str(directory), "-a", "-x", str(directory)],
            check=False,
            **self.popen_kwargs(),  # type: ignore[arg-type]
        )
        return probe.returncode == 0


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class PrivateRedis:
    """``redis-server`` without persistence, bound to 127.0.0.1, files under ``directory``."""

    binary: str
    directory: Path
    port: int = 0
    db: int = 0
    die_with_parent: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            "",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_terminate_with_parent if self.die_with_parent else None,
            )
        _wait_until(lambda: _probe_redis(self.url) is None, self.process, START_TIMEOUT_S, self.log)

    def stop(self, save: bool = False) -> None:
        """Shut down; ``save=True`` writes ``dump.rdb`` first so a restart keeps the data."""
        if self.process is None:
            return
        if save and self.process.poll() is None:
            client = redis.Redis(
                host="127.0.0.1", port=self.port, socket_timeout=STOP_TIMEOUT_S, retry=_NO_RETRY
            )
            try:
                client.shutdown(save=True)
            except redis.ConnectionError:
                # SHUTDOWN closes the connection by design; the wait below checks it happened.
                pass
            finally:
                client.close()
        _terminate(self.process, signal.SIGTERM, STOP_TIMEOUT_S)
        self.process = None


@dataclass
class _PrivatePostgres:
    """A throwaway PostgreSQL cluster under ``directory`` (trust auth, TCP on 127.0.0.1 only)."""

    initdb: str
    postgres: str
    directory: Path
    database: str
    port: int = 0
    run_as: _RunAs = field(default_factory=_RunAs)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.directory / "pg"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _env(self) -> dict[str, str]:
        # A minimal environment: the unprivileged user cannot read root's HOME,
        # and a C locale always exists.
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.run_as.chown(self.directory)
        with self.log.open("ab") as log:
            self.run_as.chown(self.log)
            result = subprocess.run(
                [
                    self.initdb,
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    # A throwaway cluster: skipping fsync saves seconds on every start.
                    "--no-sync",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                check=False,
                **self.run_as.popen_kwargs(),  # type: ignore[arg-type]
            )
        if result.returncode != 0:
            raise _StartFailed(f"initdb exited with {result.returncode}: {_tail(self.log)}")

    def start(self) -> None:
        if not self.port:
            self.port = free_port()
        args = [
            self.postgres,
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            # No Unix socket: its path is length-limited and TCP is all we use.
            "-c",
            "unix_socket_directories=",
            # fsync off survives a postgres crash (WAL is in the OS cache) but not
            # an OS crash, which a throwaway cluster does not care about.
            # synchronous_commit stays on, so an acknowledged commit survives restart_postgres.
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            # Workers x threads each hold pooled connections during chaos runs.
            "-c",
            "max_connections=300",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,
                **self.run_as.popen_kwargs(),  # type: ignore[arg-type]
            )
        _wait_until(self._accepts, self.process, START_TIMEOUT_S, self.log)

    def _accepts(self) -> bool:
        try:
            with psycopg.connect(
                f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=1
            ):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self) -> None:
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as admin:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if exists is None:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """``fast``: roll back sessions and checkpoint (SIGINT); ``immediate``: crash-like (SIGQUIT)."""
        if self.process is None:
            return
        sig = signal.SIGINT if mode == "fast" else signal.SIGQUIT
        # Signal the postmaster only: it shuts its children down in order, and a
        # group-wide signal would make the backends exit before it asks them to.
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _terminate(self.process, signal.SIGKILL, STOP_TIMEOUT_S)
        self.process = None


# --- the result ---------------------------------------------------------------------------


@dataclass
class Services:
    """The Redis and Postgres URLs to use, and control over the ones started here.

    ``started`` names the private servers (``"redis"``, ``"postgres"``);
    ``notes`` says, per service, why a private one was started, for the
    operator. Use as a context manager so private servers never outlive the run.
    """

    redis_url: str
    database_url: str
    started: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _redis: PrivateRedis | None = None
    _postgres: _PrivatePostgres | None = None
    _owned_dirs: list[Path] = field(default_factory=list)

    def restart_redis(self, keep_data: bool = True) -> None:
        """Stop and start the private Redis on the same port.

        ``keep_data=True`` saves a snapshot on shutdown and loads it on start,
        like a production Redis with persistence (compose runs it with AOF);
        ``keep_data=False`` is a crash that loses every key and queued message.
        Blocks until Redis answers PING again.
        """
        if self._redis is None:
            raise RuntimeError("Redis was not started by ensure_services; it cannot be restarted")
        self._redis.stop(save=keep_data)
        if not keep_data:
            (self._redis.directory / "dump.rdb").unlink(missing_ok=True)
        self._restart(self._redis.start, "redis")

    def restart_postgres(self, mode: ShutdownMode = "fast") -> None:
        """Stop and start the private PostgreSQL on the same port; committed data survives.

        ``mode="fast"`` is a clean shutdown (sessions rolled back); ``"immediate"``
        is crash-like and recovers from WAL on start. Blocks until it accepts
        connections again.
        """
        if self._postgres is None:
            raise RuntimeError(
                "PostgreSQL was not started by ensure_services; it cannot be restarted"
            )
        self._postgres.stop(mode)
        self._restart(self._postgres.start, "postgres")

    @staticmethod
    def _restart(start: Callable[[], None], name: str) -> None:
        try:
            start()
        except _StartFailed as exc:
            raise RuntimeError(f"private {name} did not come back: {exc}") from None

    def stop(self) -> None:
        """Stop the private servers and delete their files; configured services are left alone."""
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None
        for directory in self._owned_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self._owned_dirs.clear()

    def log_tail(self, name: ServiceName, lines: int = 20) -> str:
        """The end of a private server's log (empty when it was not started here)."""
        server = self._redis if name == "redis" else self._postgres
        if server is None:
            return ""
        try:
            return "\n".join(server.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _owned_directory(parent: Path, name: str, run_as: _RunAs) -> Path:
    """A fresh directory for one private server: ``parent/name`` if usable, else in /tmp.

    A root-owned 0700 ancestor (``/root/...``) would keep the unprivileged
    PostgreSQL user out; a ``mkdtemp`` directory under the system temp dir is
    always reachable, and is just as private once chowned.
    """
    directory = parent / name
    if directory.exists():
        # Left over from an earlier run that was killed: never reuse old data.
        directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    else:
        directory.mkdir(parents=True)
    run_as.chown(directory)
    if run_as.can_use(directory):
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    fallback = Path(tempfile.mkdtemp(prefix=f"execq-{name}-"))
    run_as.chown(fallback)
    return fallback


def _start_on_free_port(server: PrivateRedis | _PrivatePostgres, attempts: int = 3) -> None:
    """Start ``server`` on a free port, picking another if one was taken in the meantime.

    ``free_port`` releases the port before the server binds it, so another
    process can win the race; a second pick almost never loses it again.
    """
    for attempt in range(attempts):
        server.port = free_port()
        try:
            server.start()
            return
        except _StartFailed:
            if attempt == attempts - 1:
                raise
            server.stop()


def start_private_redis(
    workdir: Path, configured_url: str = "redis://127.0.0.1/0", *, die_with_parent: bool = False
) -> PrivateRedis:
    """A private ``redis-server`` on a free port with its files under ``workdir``.

    The configured URL's database number is kept. ``die_with_parent``: the server
    gets SIGTERM when this process dies, however it dies (a test run SIGKILLed
    must not leave servers behind). Raises ``RuntimeError`` when no server starts;
    ``PrivateRedis.stop()`` stops it.
    """
    binary = find_binary("redis-server")
    if binary is None:
        raise _StartFailed("no redis-server on PATH")
    db_path = urlsplit(configured_url).path.lstrip("/")
    server = PrivateRedis(
        binary=binary,
        directory=_owned_directory(workdir, "redis", _RunAs()),
        db=int(db_path) if db_path.isdigit() else 0,
        die_with_parent=die_with_parent,
    )
    try:
        _start_on_free_port(server)
    except _StartFailed:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
        raise
    return server


def _start_private_postgres(workdir: Path, configured_url: str) -> _PrivatePostgres:
    initdb, postgres = find_binary("initdb"), find_binary("postgres")
    if initdb is None or postgres is None:
        raise _StartFailed("no initdb/postgres on PATH or in /usr/lib/postgresql/*/bin")
    run_as = _RunAs.for_postgres()
    server = _PrivatePostgres(
        initdb=initdb,
        postgres=postgres,
        directory=_owned_directory(workdir, "postgres", run_as),
        database=_database_name(configured_url),
        run_as=run_as,
    )
    try:
        server.init()
        _start_on_free_port(server)
        server.create_database()
    except (_StartFailed, psycopg.Error) as exc:
        server.stop("immediate")
        shutil.rmtree(server.directory, ignore_errors=True)
        raise _StartFailed(_one_line(exc)) from None
    return server


def _keep_driver(configured_url: str, private_url: str) -> str:
    """The private URL with the configured scheme (``postgresql`` or ``postgresql+psycopg``)."""
    scheme = urlsplit(configured_url).scheme or "postgresql+psycopg"
    parts: SplitResult = urlsplit(private_url)
    return urlunsplit(parts._replace(scheme=scheme))


def ensure_services(redis_url: str | None, database_url: str, workdir: Path) -> Services:
    """Usable Redis and Postgres URLs.

    ``redis_url`` None: a private ``redis-server`` of this run's own. Given (and for
    PostgreSQL, ``database_url``): used when it answers, else a private server is
    started in its place. ``workdir`` holds the private servers' files (created if
    missing). Raises ``ServicesUnavailable`` (one line) when a service is neither
    reachable nor startable; anything already started for the other service is
    stopped first.
    """
    workdir = Path(workdir)
    services = Services(redis_url=redis_url or "", database_url=database_url)
    problems: list[str] = []

    redis_problem = _probe_redis(redis_url) if redis_url is not None else None
    if redis_url is None or redis_problem is not None:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            services._redis = start_private_redis(workdir, redis_url or "redis://127.0.0.1/0")
        except (_StartFailed, OSError) as exc:
            given = (
                "" if redis_url is None else f"Redis at {redact_url(redis_url)}: {redis_problem}; "
            )
            problems.append(f"{given}private redis-server: {exc}")
        else:
            services._owned_dirs.append(services._redis.directory)
            services.redis_url = services._redis.url
            services.started.append("redis")
            if redis_url is not None:
                services.notes.append(
                    f"Redis at {redact_url(redis_url)} unreachable ({redis_problem}); "
                    f"started a private one at {services.redis_url}"
                )

    pg_problem = _ensure_database(database_url)
    if pg_problem is not None:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            services._postgres = _start_private_postgres(workdir, database_url)
        except (_StartFailed, OSError) as exc:
            problems.append(
                f"PostgreSQL at {redact_url(database_url)}: {pg_problem}; private postgres: {exc}"
            )
        else:
            services._owned_dirs.append(services._postgres.directory)
            services.database_url = _keep_driver(database_url, services._postgres.url)
            services.started.append("postgres")
            services.notes.append(
                f"PostgreSQL at {redact_url(database_url)} unusable ({pg_problem}); "
                f"started a private one at {services.database_url}"
            )

    if problems:
        services.stop()
        raise ServicesUnavailable(f"{COMPOSE_HINT} ({'; '.join(problems)})")
    return services
