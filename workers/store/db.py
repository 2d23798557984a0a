"""One SQLAlchemy engine per process, created lazily after fork.

A connection pool inherited across ``fork()`` shares sockets between
processes and corrupts both sides, so the engine is keyed by pid and rebuilt
in a child. ``session_scope`` is the one way tasks open a transaction.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import InvalidatePoolError, OperationalError
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


def truncate_all() -> None:
    """Empty every execq table (the schema stays): for scratch databases, never a user's."""
    from workers.store.models import Base

    names = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with get_engine().begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


def check_database() -> None:
    """Raise DatabaseUnavailable with a one-line reason when Postgres cannot be reached."""
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        raise unavailable(exc) from None


def unavailable(exc: OperationalError) -> DatabaseUnavailable:
    """The one-line error for a failed connection, naming DATABASE_URL (password hidden)."""
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
    url = redact_url(get_settings().database_url)
    return DatabaseUnavailable(f"cannot connect to DATABASE_URL ({url}): {reason}")
