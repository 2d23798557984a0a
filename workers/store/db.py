"""One SQLAlchemy engine per process, created lazily after fork.

A connection pool inherited across ``fork()`` shares sockets between
processes and corrupts both sides, so the engine is keyed by pid and rebuilt
in a child. ``session_scope`` is the one way tasks open a transaction.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import namedtuple_row
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Engine, Executable, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InvalidatePoolError, MultipleResultsFound, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from workers.settings import get_settings, redact_url

_lock = threading.Lock()
_engine: Engine | None = None
_engine_pid: int | None = None
_sessionmaker: sessionmaker[Session] | None = None

# Seconds a pooled connection may sit unused before its next checkout pings it.
IDLE_PING_AFTER_S = 1.0
_IDLE_SINCE = "execq_idle_since"


class DatabaseUnavailable(Exception):
    """Postgres at DATABASE_URL cannot be reached; the message says where."""


def get_engine() -> Engine:
    global _engine, _engine_pid, _sessionmaker
    pid = os.getpid()
    if _engine is not None and _engine_pid == pid:
        return _engine
    with _lock:
        if _engine is None or _engine_pid != pid:
            if _engine is not None:
                # Inherited from the parent: drop the pool without closing its sockets.
                _engine.dispose(close=False)
            settings = get_settings()
            _engine = create_engine(
                settings.database_url,
                # One connection per worker thread, kept: with fewer, the threads'
                # overflow connections were opened and closed all the time (one new
                # Postgres session per eight orders at 120 orders/s, execq bench).
                pool_size=settings.worker_concurrency,
                max_overflow=10,
                pool_recycle=1800,
                # A single_statement connection has no transaction to roll back on return.
                skip_autocommit_rollback=True,
                connect_args={"connect_timeout": 5},
            )
            ping_idle_connections(_engine)
            _engine_pid = pid
            _sessionmaker = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def ping_idle_connections(engine: Engine, idle_after_s: float = IDLE_PING_AFTER_S) -> None:
    """Ping a pooled connection on checkout only when it sat unused for ``idle_after_s``.

    A connection that Postgres dropped while it sat in the pool (a restart, an
    idle timeout) is replaced at checkout, before any statement. One that was in
    use a moment ago is not pinged: under load that ping was two of a market
    order's eleven round trips to Postgres (``pool_pre_ping`` pings every
    checkout). A server lost since that moment fails the statement instead, and
    the task retries it like any other Postgres outage (``INFRASTRUCTURE_ERRORS``).
    """

    @event.listens_for(engine, "checkin")
    def _mark_idle(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < idle_after_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # Most likely Postgres restarted, so every pooled connection is gone: the
            # pool replaces them all (as they are checked out) and retries this one.
            raise InvalidatePoolError(f"pooled connection lost while idle: {exc}") from exc


def dispose_engine() -> None:
    global _engine, _engine_pid, _sessionmaker
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine, _engine_pid, _sessionmaker = None, None, None


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    get_engine()
    assert _sessionmaker is not None
    session = _sessionmaker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def single_statement() -> Iterator[Connection]:
    """A connection on which each statement commits as it runs.

    For a write that is one statement, atomic by itself: it saves the BEGIN and
    COMMIT round trips of a transaction (on the order hot path, before the
    exchange call). Anything that needs two statements uses ``session_scope``.
    """
    with get_engine().connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


class DriverStatement:
    """A statement of the order hot path, run by psycopg itself in SQLAlchemy's transaction.

    Through SQLAlchemy Core a small statement costs about twice psycopg's own
    CPU (an execution context, result metadata, row processing per call): a
    worker spent 0.50 ms per statement against psycopg's 0.28 ms, five times
    per market order; through psycopg a worker spends about 10 % less CPU per
    order. The statement is still built with SQLAlchemy and compiled once for
    the connection's dialect; it runs on the same connection and transaction as
    the session's other statements. What SQLAlchemy does for its own statements is kept:

    - ``dict`` and ``list`` parameters are bound as JSONB (its JSONB type's job);
    - rows come back with attribute access (``row.status``), as Core rows do;
    - a driver error is raised as SQLAlchemy's ``DBAPIError`` subclass
      (``OperationalError`` for a lost server, which the tasks retry), and a
      lost connection is invalidated so the pool does not hand it out again.
    """

    def __init__(self, statement: Executable) -> None:
        self._statement = statement
        # An UPDATE's SET clause is the parameters' columns, as with Core: one SQL per
        # key set, with the values of the statement's own literals (``"|"`` in ``a || "|"``).
        self._compiled_by_keys: dict[tuple[str, ...], tuple[str, dict[str, Any]]] = {}

    def execute(self, connection: Connection, parameters: Mapping[str, Any]) -> psycopg.Cursor[Any]:
        """Run the statement on ``connection``; the cursor holds its rows."""
        keys = tuple(parameters)
        compiled = self._compiled_by_keys.get(keys)
        if compiled is None:
            compiled = self._compiled_by_keys[keys] = self._compile(connection, keys)
        sql, literals = compiled
        bound = literals | {
            name: Jsonb(value) if isinstance(value, dict | list) else value
            for name, value in parameters.items()
        }
        driver = connection.connection.driver_connection
        try:
            return driver.cursor(row_factory=namedtuple_row).execute(sql, bound)
        except psycopg.Error as exc:
            raise _as_sqlalchemy_error(connection, exc, sql, bound) from exc

    def _compile(self, connection: Connection, keys: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
        compiled = self._statement.compile(dialect=connection.dialect, column_keys=list(keys))
        literals = {
            compiled.bind_names[bind]: bind.effective_value
            for bind in compiled.binds.values()
            if not bind.required
        }
        return str(compiled), literals

    def one_or_none(self, connection: Connection, parameters: Mapping[str, Any]) -> Any:
        """The statement's only row, or None; more than one raises, as Core's does."""
        rows = self.execute(connection, parameters).fetchmany(2)
        if len(rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when one or none was required")
        return rows[0] if rows else None


def _as_sqlalchemy_error(
    connection: Connection, exc: psycopg.Error, sql: str, parameters: Mapping[str, Any]
) -> DBAPIError:
    dialect = connection.dialect
    lost = dialect.is_disconnect(exc, connection.connection.dbapi_connection, None)
    if lost:
        connection.invalidate(exc)
    return DBAPIError.instance(
        sql, dict(parameters), exc, psycopg.Error, connection_invalidated=lost, dialect=dialect
    )


TRUNCATE_ATTEMPTS = 3


def truncate_all() -> None:
    """Empty every execq table (the schema stays): for scratch databases, never a user's."""
    from workers.store.models import Base

    names = ", ".join(table.name for table in Base.metadata.sorted_tables)
    # TRUNCATE locks its tables one by one: a worker still writing to two of them can
    # deadlock it, and Postgres then cancels one side. Ours is safe to run again.
    for attempt in range(1, TRUNCATE_ATTEMPTS + 1):
        try:
            with get_engine().begin() as connection:
                connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            return
        except OperationalError as exc:
            if attempt == TRUNCATE_ATTEMPTS or not isinstance(
                exc.orig, psycopg.errors.DeadlockDetected
            ):
                raise


def check_database() -> None:
    """Raise DatabaseUnavailable with a one-line reason when Postgres cannot be reached,
    or when its database is not UTF8.

    execq writes text in every table and reads it back as text; a SQL_ASCII
    database hands psycopg bytes, on which SQLAlchemy fails before any statement.
    """
    url = get_settings().database_url
    libpq_url = urlunsplit(urlsplit(url)._replace(scheme="postgresql"))
    try:
        with psycopg.connect(libpq_url, connect_timeout=5, autocommit=True) as connection:
            encoding = connection.info.parameter_status("server_encoding")
    except psycopg.OperationalError as exc:
        raise unavailable(exc) from None
    if encoding != "UTF8":
        database = urlsplit(url).path.lstrip("/") or "?"
        raise DatabaseUnavailable(
            f"database {database!r} at DATABASE_URL ({redact_url(url)}) has encoding "
            f"{encoding}; execq needs UTF8: CREATE DATABASE {database} ENCODING 'UTF8' "
            "TEMPLATE template0"
        )


def unavailable(exc: OperationalError | psycopg.OperationalError) -> DatabaseUnavailable:
    """The one-line error for a failed connection, naming DATABASE_URL (password hidden)."""
    cause = getattr(exc, "orig", None) or exc
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    url = redact_url(get_settings().database_url)
    return DatabaseUnavailable(f"cannot connect to DATABASE_URL ({url}): {reason}")
