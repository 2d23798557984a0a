"""``execq demo`` in its short form: the scenario's checks hold, and its figures are true.

The demo runs as the operator runs it (``python -m workers.cli demo --json``)
on the test run's Postgres server, in a database of its own, and on a private
redis-server of its own. It is kept running at the end so this test can read
the simulator's ledger itself and compare every summary figure with Postgres and
the ledger; then the test stops it the documented way, which drops its database.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
import requests

from tests.conftest import ADMIN_DATABASE_URL, ROOT, TEST_REDIS_URL, free_port

pytestmark = pytest.mark.services

DEMO_DATABASE = f"execq_demo_test_{os.getpid()}"
# The short scenario takes about a minute; the margin covers a loaded CI machine.
DEMO_TIMEOUT_S = 240


def execq_demo(*args: str, timeout_s: float = DEMO_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", "demo", "--database", DEMO_DATABASE, *args],
        cwd=ROOT,
        env={**os.environ, "EXECQ_DEMO_SHORT": "1"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _demo_database_exists() -> bool:
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        found = admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)
        ).fetchone()
    return found is not None


def _drop_demo_database() -> None:
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)')


@pytest.fixture
def demo_run() -> Iterator[tuple[subprocess.CompletedProcess[str], dict[str, Any]]]:
    """Run the short demo (``--keep-running``) on fixed ports; the test stops it."""
    sim_port, flower_port = free_port(), free_port()
    try:
        completed = execq_demo(
            "--json",
            "--keep-running",
            "--sim-port",
            str(sim_port),
            "--flower-port",
            str(flower_port),
        )
        lines = completed.stdout.strip().splitlines()
        assert lines, f"no JSON on stdout; stderr:\n{completed.stderr[-4000:]}"
        yield completed, json.loads(lines[-1]) | {"ports": (sim_port, flower_port)}
    finally:
        # A no-op when the test stopped it already.
        execq_demo("--stop", timeout_s=60)
        _drop_demo_database()


def _query(sql: str) -> list[tuple[Any, ...]]:
    url = ADMIN_DATABASE_URL.rsplit("/", 1)[0] + f"/{DEMO_DATABASE}"
    with psycopg.connect(url) as connection:
        return connection.execute(sql).fetchall()


def _running_in_groups(groups: set[int]) -> list[str]:
    """The processes of these process groups that still run (an exited one waiting to be
    reaped does not), as ``pid command``; Linux's /proc."""
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces, so split after its ")"
        state, _ppid, pgrp = text.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) in groups and state != "Z":
            running.append(f"{stat.parent.name} {text.split(')')[0]})")
    return running


def _by_key(sql: str) -> dict[str, int]:
    return {str(key): int(count) for key, count in _query(sql)}


def test_demo_short_form_checks_hold_and_figures_match_postgres_and_ledger(
    demo_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    completed, result = demo_run
    failed = [check for check in result.get("checks", []) if not check["ok"]]
    assert completed.returncode == 0 and result["ok"], (
        f"exit {completed.returncode}; failed checks {failed}; error {result.get('error')}\n"
        f"{completed.stderr[-4000:]}"
    )
    assert result["profile"] == "short"
    assert result["kept_running"] is True
    # The progress view went to stderr; stdout is the one JSON object.
    assert len(completed.stdout.strip().splitlines()) == 1
    assert "[ok  ] no duplicate orders" in completed.stderr
    assert result["flower_url"] in completed.stderr

    figures = result["figures"]
    # Nothing the demo touched is the test run's own: its database, a Redis of its own.
    assert result["database_url"].endswith(f"/{DEMO_DATABASE}")
    assert urlsplit(result["redis_url"]).port != urlsplit(TEST_REDIS_URL).port
    # The simulator and Flower listen where they were told to.
    sim_port, flower_port = result["ports"]
    assert urlsplit(result["sim_url"]).port == sim_port
    assert urlsplit(result["flower_url"]).port == flower_port

    # --- the simulator's ledger, read here independently ---------------------------------
    sim_url = result["sim_url"]
    ledger = requests.get(f"{sim_url}/_sim/ledger", timeout=10).json()["orders"]
    positions = requests.get(f"{sim_url}/_sim/positions", timeout=10).json()["positions"]
    per_client_id = Counter((row["exchange"], row["clientOrderId"]) for row in ledger)
    duplicates = sum(count - 1 for count in per_client_id.values() if count > 1)
    assert duplicates == figures["duplicates"] == 0
    assert len(ledger) == figures["ledger_orders"]
    assert dict(Counter(row["exchange"] for row in ledger)) == figures["ledger_by_exchange"]
    assert positions == [] and figures["open_positions_exchange"] == 0
    # All three exchanges were traded on.
    assert set(figures["ledger_by_exchange"]) == {"binance", "bybit", "okx"}

    # --- Postgres, read here independently ----------------------------------------------
    assert _query("SELECT count(*) FROM orders")[0][0] == figures["orders"]
    assert _by_key("SELECT status, count(*) FROM orders GROUP BY 1") == figures["orders_by_status"]
    attempts = _by_key(
        "SELECT coalesce(error_class, 'success'), count(*) FROM events "
        "WHERE type = 'order_attempt' GROUP BY 1"
    )
    assert attempts == figures["attempts_by_class"]
    # The injected faults show up as their retry classes.
    assert attempts.get("rate_limited", 0) >= 1
    assert attempts.get("ambiguous", 0) >= 1
    assert attempts.get("permanent", 0) >= 3  # the refused closes before the chunk fallback
    closes = _by_key(
        "SELECT close_reason, count(*) FROM aged_positions WHERE status = 'closed' GROUP BY 1"
    )
    assert closes == figures["aged_closes_by_reason"]
    assert closes.get("profitable", 0) >= 2  # grace close and the chunked close
    assert any(reason.startswith("progressive_") for reason in closes)
    alerts = _by_key("SELECT kind, count(*) FROM alerts GROUP BY 1")
    assert alerts == figures["alerts_by_kind"]
    assert alerts.get("aged_close_failing", 0) >= 1
    assert (
        _query("SELECT count(*) FROM orders WHERE verification = 'verified'")[0][0]
        == figures["orders_verified"]
    )
    assert _query("SELECT count(*) FROM positions WHERE status = 'open'")[0][0] == 0
    assert _query("SELECT count(*) FROM orders WHERE purpose = 'aged_chunk' AND status = 'filled'")[
        0
    ][0] == figures["chunk_orders"].get("aged_chunk filled")

    # The killed worker's order: one order on the exchange, filled by the recovery sweep.
    killed = figures["killed_order"]
    cid = killed["client_order_id"]
    assert per_client_id[("binance", cid)] == 1
    assert _query(
        f"SELECT status FROM orders WHERE client_order_id = '{cid}'"  # noqa: S608 - our own id
    ) == [("filled",)]
    assert (
        _query(
            "SELECT count(*) FROM events WHERE client_order_id = "
            f"'{cid}' AND payload->>'source' = 'tracking'"  # noqa: S608
        )[0][0]
        >= 1
    )

    # A pushed price closed an aged position: the stream holder claimed its close, and the
    # exchange accepted it after the price moved.
    stream_close = figures["stream_close"]
    claimed = _query(
        "SELECT payload->>'trigger' FROM events WHERE type = 'aged_close_claimed' "
        f"AND aged_id = {int(stream_close['aged_id'])} ORDER BY id LIMIT 1"  # noqa: S608
    )
    assert claimed == [("stream",)] and stream_close["trigger"] == "stream"
    assert stream_close["close_reason"] is not None and stream_close["latency_ms"] > 0
    assert "trigger stream: price move -> close accepted by the exchange in" in completed.stderr

    # The open under the kill switch never reached an exchange.
    refused = figures["refused_order"]
    assert not any(row["clientOrderId"] == refused["client_order_id"] for row in ledger)
    liquidation = _query(
        "SELECT payload FROM events WHERE type = 'liquidation_summary' ORDER BY id DESC LIMIT 1"
    )[0][0]
    assert liquidation["failed"] == 0 and liquidation["closed"] == liquidation["total"] > 0

    # Stopped the documented way, nothing of the demo is left: its processes, its private
    # Redis, its database.
    stopped = execq_demo("--stop", timeout_s=60)
    assert stopped.returncode == 0 and "database" in stopped.stdout, stopped.stderr
    assert not _demo_database_exists()
    # every process it recorded (workers, beat, Flower, the API, the stream holder)
    groups = set(result["processes"]["process_groups"])
    assert _running_in_groups(groups) == [], completed.stderr[-2000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sim_url}/_sim/positions", timeout=2)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(result["redis_url"], socket_connect_timeout=1).ping()


def test_a_demo_that_cannot_start_says_why_and_drops_its_database() -> None:
    # Given the port asked for the simulator is taken
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # When the demo runs with it
        completed = execq_demo("--json", "--sim-port", str(port), timeout_s=120)

    # Then it exits 2 naming the simulator, and its database (created and migrated
    # before the processes start) is gone again
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "simulator" in result["error"]
    assert result["database_url"].endswith(f"/{DEMO_DATABASE}")
    assert not _demo_database_exists()
    # and it kept the process logs for the operator, and said where
    kept = re.search(r"process logs kept in (\S+)", completed.stderr)
    assert kept is not None, completed.stderr[-2000:]
    assert "address already in use" in (Path(kept[1]) / "sim.log").read_text().lower()
    shutil.rmtree(kept[1])
