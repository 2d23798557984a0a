"""The operator CLI against the real services: output asserted, errors are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, wait_for

ETH = "ETH/USDT:USDT"


def execq(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_signal_status_events_and_stats_tell_one_story(worker, sim):
    # When an operator sends an order and waits for it
    sent = execq(
        "signal",
        "binance",
        "buy",
        "0.1",
        ETH,
        "--signal-id",
        "cli-test-1",
        "--wait",
        "60",
        "--json",
    )
    assert sent.returncode == 0, sent.stderr
    body = json.loads(sent.stdout.strip().splitlines()[-1])
    assert body["signal_id"] == "cli-test-1"
    assert body["result"]["status"] == "filled"
    cid = body["result"]["client_order_id"]

    # Then status shows the verified position
    def verified_position():
        status = json.loads(execq("status", "--json").stdout)
        return [p for p in status["open_positions"] if p["symbol"] == ETH] or None

    positions = wait_for(verified_position, 30, interval_s=0.3, message="no position in status")
    assert positions[0]["side"] == "long" and positions[0]["verification"] == "verified"
    table = execq("status")
    assert table.returncode == 0
    assert "open positions (1)" in table.stdout and ETH in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 100

    # and the event log, filtered by the order, tells its steps
    events = execq("events", "--order", cid, "--json")
    types = [json.loads(line)["type"] for line in events.stdout.splitlines()]
    assert types[:2] == ["order_intent", "order_submitting"]
    assert "order_filled" in types
    only_fills = execq("events", "--type", "order_filled")
    assert "order_filled" in only_fills.stdout and "order_intent" not in only_fills.stdout

    # and stats answer (nothing aged yet)
    stats = json.loads(execq("stats", "--days", "7", "--json").stdout)
    assert stats["aged_positions"] == 0 and stats["success_rate"] is None


def test_kill_switch_on_refuses_opens_and_off_allows_them(worker, sim):
    on = execq("kill-switch", "on", "--reason", "maintenance")
    assert on.returncode == 0 and "kill switch on (maintenance)" in on.stdout
    status = json.loads(execq("status", "--json").stdout)
    assert status["kill_switch"]["on"] and status["kill_switch"]["reason"] == "maintenance"

    refused = execq("signal", "bybit", "buy", "0.1", ETH, "--wait", "60", "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout.splitlines()[-1])["result"]["status"] == "rejected"

    off = execq("kill-switch", "off")
    assert off.returncode == 0 and "kill switch off" in off.stdout
    allowed = execq("signal", "bybit", "buy", "0.1", ETH, "--wait", "60", "--json")
    assert json.loads(allowed.stdout.splitlines()[-1])["result"]["status"] == "filled"


def test_liquidate_all_prints_the_summary_and_leaves_the_switch_on(worker, sim):
    sim.set_position("binance", ETH, "0.2", "3500")
    sim.set_position("bybit", "SOL/USDT:USDT", "-2", "150")

    result = execq("liquidate-all", "--reason", "drill", "--json")
    execq("kill-switch", "off")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["total"], summary["closed"], summary["failed"]) == (2, 2, 0)
    assert summary["kill_switch"] == "on"
    assert sim.positions() == []


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["signal", "binance", "hold", "1", ETH], {}, "hold"),
        (
            ["signal", "binance", "buy", "1", ETH],
            {"REDIS_URL": "redis://127.0.0.1:1/0"},
            "REDIS_URL",
        ),
        (["status"], {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}, "DATABASE_URL"),
        (["migrate"], {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}, "DATABASE_URL"),
        (["stats", "--days", "-1"], {}, "--days"),
        (["events", "--limit", "0"], {}, "--limit"),
    ],
)
def test_foreseeable_mistakes_get_one_line_and_exit_2(database, redis_server, args, env, needle):
    result = execq(*args, env=env)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("days", ["nan", "inf", "-inf", "-1", "0", "1e400", "a week"])
def test_stats_with_days_that_are_no_number_of_days_is_a_one_line_usage_error(days):
    # When an operator asks for statistics over nan, infinite or negative days
    result = execq("stats", f"--days={days}")
    # Then one line names the option and the value, and the exit code is 2
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"execq: --days must be a number of days above 0 and at most 36500, got {days!r}"
    ]


def test_migrate_against_a_sql_ascii_database_is_a_one_line_error(database):
    import psycopg

    from tests.conftest import ADMIN_DATABASE_URL

    # Given a database created with the SQL_ASCII encoding
    name = f"execq_sql_ascii_{os.getpid()}"
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' TEMPLATE template0 "
            "LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    try:
        # When the operator migrates it
        url = f"{ADMIN_DATABASE_URL.rsplit('/', 1)[0]}/{name}"
        result = execq("migrate", env={"DATABASE_URL": url})
        # Then one line says what is wrong and how to create a usable database
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "has encoding SQL_ASCII; execq needs UTF8" in result.stderr
        assert "ENCODING 'UTF8' TEMPLATE template0" in result.stderr
    finally:
        with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_every_command_has_help():
    # In process: the entry point itself is exercised by every other test here.
    from click.testing import CliRunner

    from workers.cli.main import cli

    runner = CliRunner()
    for command in [
        "demo",
        "sim",
        "migrate",
        "signal",
        "status",
        "events",
        "stats",
        "kill-switch",
        "liquidate-all",
        "bench",
        "chaos",
        "bench-flows",
    ]:
        result = runner.invoke(cli, [command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage: " in result.stdout
