"""The worker's connection pool and Postgres dropping its connections (a restart)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, bindparam, create_engine, literal, select, text
from sqlalchemy.exc import IntegrityError, MultipleResultsFound, OperationalError

from tests.conftest import ADMIN_DATABASE_URL, wait_for
from workers.store.db import DriverStatement, ping_idle_connections


@pytest.fixture
def pool_of_one(database: str) -> Iterator[Engine]:
    engine = create_engine(database, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _drop_backend(pid: int) -> None:
    """What a Postgres restart does to a pooled connection: the server closes it."""
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        def gone() -> bool:
            row = admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
            return row.fetchone() is None

        wait_for(gone, timeout_s=10, message=f"backend {pid} still there")


def test_a_connection_dropped_while_idle_is_replaced_before_any_statement(pool_of_one):
    ping_idle_connections(pool_of_one, idle_after_s=0)
    dropped = _backend_pid(pool_of_one)
    _drop_backend(dropped)

    assert _backend_pid(pool_of_one) != dropped


def test_a_connection_used_a_moment_ago_is_not_pinged_and_the_pool_recovers_after_one_failure(
    pool_of_one,
):
    ping_idle_connections(pool_of_one, idle_after_s=3600)
    dropped = _backend_pid(pool_of_one)
    _drop_backend(dropped)

    # No ping on this checkout: the statement meets the closed connection. A task
    # retries such an error (INFRASTRUCTURE_ERRORS), and the pool has let it go.
    with pytest.raises(OperationalError), pool_of_one.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert _backend_pid(pool_of_one) != dropped


def test_a_driver_statement_on_a_dropped_connection_fails_as_sqlalchemy_would_and_the_pool_recovers(
    pool_of_one,
):
    ping_idle_connections(pool_of_one, idle_after_s=3600)
    dropped = _backend_pid(pool_of_one)
    _drop_backend(dropped)
    statement = DriverStatement(select(literal(1)))

    # The tasks retry OperationalError (INFRASTRUCTURE_ERRORS): a statement run by
    # psycopg itself must raise it too, and leave the broken connection out of the pool.
    with pytest.raises(OperationalError), pool_of_one.connect() as connection:
        statement.execute(connection, {})
    assert _backend_pid(pool_of_one) != dropped


def test_a_driver_statement_binds_literals_json_and_keys_and_raises_constraint_errors(
    pool_of_one,
):
    with pool_of_one.begin() as connection:
        connection.execute(text("CREATE TEMPORARY TABLE notes (id int PRIMARY KEY, body jsonb)"))
        insert = DriverStatement(
            text("INSERT INTO notes VALUES (:id, :body) RETURNING id, body ->> 'side' AS side")
        )
        row = insert.one_or_none(connection, {"id": 1, "body": {"side": "buy"}})
        assert (row.id, row.side) == (1, "buy")
        # A literal inside the statement ("|") travels with it; only :name is given.
        joined = DriverStatement(select((bindparam("a") + "|" + bindparam("b")).label("pair")))
        assert joined.one_or_none(connection, {"a": "x", "b": "y"}).pair == "x|y"
        with pytest.raises(IntegrityError):
            insert.execute(connection, {"id": 1, "body": {}})


def test_a_driver_statement_expecting_one_row_refuses_two(pool_of_one):
    with pool_of_one.begin() as connection:
        connection.execute(text("CREATE TEMPORARY TABLE pairs (symbol text)"))
        connection.execute(text("INSERT INTO pairs VALUES ('BTC'), ('BTC')"))
        by_symbol = DriverStatement(text("SELECT symbol FROM pairs WHERE symbol = :symbol"))
        assert by_symbol.one_or_none(connection, {"symbol": "ETH"}) is None
        with pytest.raises(MultipleResultsFound):
            by_symbol.one_or_none(connection, {"symbol": "BTC"})
