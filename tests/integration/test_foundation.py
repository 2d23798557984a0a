"""The foundation: a task round-trips through real Redis and a real worker into Postgres;
migrations go up and down; bad settings fail with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, inspect, select

from tests.conftest import ADMIN_DATABASE_URL, ROOT


def test_ping_task_round_trips_and_its_event_lands_in_postgres(worker):
    # Given a running worker
    from workers.app import app
    from workers.store.db import session_scope
    from workers.store.models import Event

    # When a producer sends the ping task by name
    result = app.send_task("ping", kwargs={"note": "smoke"})
    body = result.get(timeout=20)

    # Then the worker wrote an event that Postgres returns
    with session_scope() as session:
        event = session.scalars(select(Event).where(Event.id == body["event_id"])).one()
    assert event.type == "ping"
    assert event.payload["note"] == "smoke"
    assert event.occurred_at.tzinfo is not None


def test_worker_lists_the_execq_tasks(worker):
    from workers.app import app

    # Addressed to the worker, the inspect returns as soon as it replies.
    registered = app.control.inspect(destination=[worker.name], timeout=5).registered()
    names = set().union(*registered.values())
    assert {"ping"} <= names


def test_migrations_go_up_and_down_cleanly():
    import psycopg

    name = f"execq_migrate_{os.getpid()}"
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_DATABASE_URL.rsplit("/", 1)[0] + f"/{name}"
    env = {**os.environ, "DATABASE_URL": url}
    try:
        alembic = [sys.executable, "-m", "alembic"]
        subprocess.run([*alembic, "upgrade", "head"], cwd=ROOT, env=env, check=True)
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        tables = set(inspect(engine).get_table_names())
        assert {"orders", "positions", "aged_positions", "events", "alerts"} <= tables

        subprocess.run([*alembic, "downgrade", "base"], cwd=ROOT, env=env, check=True)
        engine.dispose()
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        engine.dispose()
    finally:
        with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DATABASE_URL", "mysql://nope", "DATABASE_URL"),
        ("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none", "DATABASE_URL"),
        ("EXECQ_ACCOUNTS", '[{"name": "x", "ccxt_class": "kraken"}]', "EXECQ_ACCOUNTS"),
        ("EXECQ_RETRY__RATE_LIMITED__ATTEMPTS", "many", "EXECQ_RETRY__RATE_LIMITED__ATTEMPTS"),
    ],
)
def test_a_bad_setting_gives_one_line_naming_the_variable(variable, value, expected):
    # When `execq migrate` runs with a bad setting
    result = subprocess.run(
        [sys.executable, "-m", "workers.cli", "migrate"],
        cwd=ROOT,
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
    )
    # Then it exits 2 with one line that names the variable, and no traceback
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_secrets_never_show_in_reprs():
    from workers.settings import ExchangeAccount

    account = ExchangeAccount(
        name="live1", ccxt_class="binanceusdm", mode="live", api_key="AKIA-key", secret="s3cr3t"
    )
    assert "s3cr3t" not in repr(account)
    assert "AKIA-key" not in repr(account)
    assert account.credentials() == ("AKIA-key", "s3cr3t")
