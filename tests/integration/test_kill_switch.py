"""The kill switch is durable: Postgres keeps it, and a Redis that lost it never turns it off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import ROOT, free_port

BTC = "BTC/USDT:USDT"


def execq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def kill_switch_events() -> list[dict]:
    from workers.store.reports import recent_events

    types = ("kill_switch_on", "kill_switch_off", "kill_switch_restored")
    return recent_events(types=types, limit=100)


# --- in this process, on the suite's Redis and database ---------------------------------------


def test_the_state_and_its_event_are_written_together_and_off_is_explicit(db, redis_clean):
    from workers import redis_keys
    from workers.coordination import set_kill_switch
    from workers.redis_client import get_redis
    from workers.store.kill_switch import load_kill_switch

    # When the switch is turned on, then off
    on = set_kill_switch(True, "maintenance", set_by="ops@desk")
    off = set_kill_switch(False, "done", set_by="ops@desk")

    # Then Postgres holds the last state, and each change has its event with who and why
    row = load_kill_switch()
    assert (row.engaged, row.reason, row.set_by, row.since) == (
        False,
        "done",
        "ops@desk",
        off.since,
    )
    events = kill_switch_events()
    assert [(e["type"], e["payload"]["reason"], e["payload"]["set_by"]) for e in events] == [
        ("kill_switch_on", "maintenance", "ops@desk"),
        ("kill_switch_off", "done", "ops@desk"),
    ]
    assert on.since < off.since
    # and "off" is a value in Redis, not a missing key
    assert json.loads(get_redis().get(redis_keys.KILL_SWITCH))["on"] is False


def test_a_lost_key_is_read_from_postgres_and_written_back(db, redis_clean):
    from workers import redis_keys
    from workers.coordination import kill_switch_state, set_kill_switch
    from workers.redis_client import get_redis

    # Given the switch on, and Redis having lost its copy
    set_kill_switch(True, "incident", set_by="ops@desk")
    get_redis().delete(redis_keys.KILL_SWITCH)

    # When anyone reads it
    state = kill_switch_state()

    # Then it is on, as Postgres says, and Redis has it again
    assert (state.on, state.reason, state.set_by) == (True, "incident", "ops@desk")
    assert json.loads(get_redis().get(redis_keys.KILL_SWITCH))["on"] is True
    # and the restore is on record, once
    assert kill_switch_state().on
    assert [e["type"] for e in kill_switch_events()].count("kill_switch_restored") == 1


def test_a_switch_never_set_reads_off_and_is_written_as_off(db, redis_clean):
    from workers import redis_keys
    from workers.coordination import kill_switch_state
    from workers.redis_client import get_redis

    assert not kill_switch_state().on
    assert json.loads(get_redis().get(redis_keys.KILL_SWITCH))["on"] is False
    assert kill_switch_events() == []


def test_reconcile_puts_back_what_postgres_says(db, redis_clean):
    from workers import redis_keys
    from workers.coordination import KillSwitchState, reconcile_kill_switch, set_kill_switch
    from workers.redis_client import get_redis

    # Given the switch on, and someone writing "off" into Redis by hand
    set_kill_switch(True, "incident", set_by="ops@desk")
    get_redis().set(redis_keys.KILL_SWITCH, KillSwitchState(on=False).encoded())

    # When the recovery sweep reconciles
    state = reconcile_kill_switch()

    # Then Redis says on again
    assert state.on
    assert json.loads(get_redis().get(redis_keys.KILL_SWITCH))["on"] is True


def test_a_switch_engaged_before_it_was_durable_is_adopted(db, redis_clean):
    from workers import redis_keys
    from workers.coordination import reconcile_kill_switch
    from workers.redis_client import get_redis
    from workers.store.kill_switch import load_kill_switch

    # Given a key as written before the state went to Postgres (present meant on)
    get_redis().set(
        redis_keys.KILL_SWITCH,
        json.dumps({"reason": "old", "since": "2026-11-30T10:00:00+00:00"}),
    )

    # When the recovery sweep reconciles, then Postgres holds it
    assert reconcile_kill_switch().on
    row = load_kill_switch()
    assert row is not None and row.engaged and row.reason == "old"


def test_an_open_is_refused_when_redis_lost_only_the_switch(worker, sim):
    from workers import redis_keys
    from workers.coordination import set_kill_switch
    from workers.producer import submit_market_order
    from workers.redis_client import get_redis

    def open_order() -> dict:
        signal_id = f"ks-{uuid.uuid4().hex[:12]}"
        return submit_market_order(signal_id, "binance", BTC, "buy", "0.01").get(timeout=60)

    # Given the switch on, and a fresh reference price that an open just cached
    set_kill_switch(True, "incident")
    try:
        assert open_order()["error_class"] == "kill_switch"
        assert get_redis().exists(redis_keys.price_cache("binance", BTC))

        # When Redis loses the switch's key alone
        get_redis().delete(redis_keys.KILL_SWITCH)

        # Then the next open, which reads price and switch in one round trip, is refused
        refused = open_order()
        assert (refused["status"], refused["error_class"]) == ("rejected", "kill_switch")
        assert sim.orders_for(refused["client_order_id"]) == []
    finally:
        set_kill_switch(False)


# --- a worker on a Redis of the test's own --------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    from workers.harness.services import start_private_redis

    server = start_private_redis(tmp_path, "redis://127.0.0.1/0", die_with_parent=True)
    yield server.url
    server.stop()


def scrape_kill_switch(port: int) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name == "execq_kill_switch":
            return family.samples[0].value
    return None


@pytest.mark.services
def test_after_redis_loses_everything_the_next_open_is_still_refused(
    workers, db, sim, private_redis
):
    from workers.harness.bench import client_app

    env = {"REDIS_URL": private_redis}
    metrics_port = free_port()
    broker = client_app(private_redis)
    try:
        worker = workers.spawn(concurrency=4, env={**env, "EXECQ_METRICS_PORT": str(metrics_port)})
        workers.wait_ready(worker, broker=broker)

        # Given the operator turned the kill switch on
        on = execq("kill-switch", "on", "--reason", "incident", env=env)
        assert on.returncode == 0, on.stderr
        # the worker's gauge says so at once, before any order read the switch
        assert scrape_kill_switch(metrics_port) == 1

        # When Redis loses all its data
        redis.Redis.from_url(private_redis).flushall()

        # Then the next open (not reduce-only) is refused, and nothing reaches the exchange
        refused = execq("signal", "binance", "buy", "0.01", BTC, "--wait", "60", "--json", env=env)
        assert refused.returncode == 1, refused.stderr  # refused: exit 1 with the reason
        result = json.loads(refused.stdout.splitlines()[-1])["result"]
        assert (result["status"], result["error_class"]) == ("rejected", "kill_switch")
        assert sim.orders_for(result["client_order_id"]) == []
        # and status and the gauge tell the same
        status = json.loads(execq("status", "--json", env=env).stdout)
        assert status["kill_switch"]["on"] and status["kill_switch"]["reason"] == "incident"
        assert scrape_kill_switch(metrics_port) == 1

        # When the operator turns it off, opens fill again and the gauge drops at once
        assert execq("kill-switch", "off", env=env).returncode == 0
        assert scrape_kill_switch(metrics_port) == 0
        allowed = execq("signal", "binance", "buy", "0.01", BTC, "--wait", "60", "--json", env=env)
        assert json.loads(allowed.stdout.splitlines()[-1])["result"]["status"] == "filled"
    finally:
        execq("kill-switch", "off", env=env)
        broker.close()


def test_the_gauge_is_left_out_rather_than_guessed_when_redis_is_unreachable(
    db, monkeypatch: pytest.MonkeyPatch
):
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from workers.observability.metrics import KillSwitchCollector

    # Given a Redis that does not answer
    unreachable = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    monkeypatch.setattr("workers.coordination.get_redis", lambda: unreachable)
    try:
        # Then a scrape has no execq_kill_switch sample, rather than a 0 nobody read
        assert list(KillSwitchCollector().collect()) == []
    finally:
        unreachable.close()
