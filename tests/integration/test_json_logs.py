"""``EXECQ_LOG_FORMAT=json``: every line a worker or beat prints is one JSON object."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
import redis

from tests.conftest import ManagedProcess, wait_for

JSON_ENV = {"EXECQ_LOG_FORMAT": "json"}


def records(process: ManagedProcess) -> list[dict]:
    """Every line the process printed (stdout and stderr), each parsed as one JSON object."""
    assert process.log_path is not None
    lines = process.log_path.read_text().splitlines()
    assert lines, "the process printed nothing"
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "message"} <= record.keys(), line
        parsed.append(record)
    return parsed


@pytest.mark.services
def test_a_json_worker_prints_only_json_lines_through_an_order(workers, db, redis_clean, sim):
    from workers.producer import submit_market_order

    # Given a worker with JSON logs
    worker = workers.start(concurrency=4, env=JSON_ENV)

    # When it fills an order and fails a signal it must reject
    filled = submit_market_order(
        f"json-{uuid.uuid4().hex[:10]}", "binance", "BTC/USDT:USDT", "buy", "0.01"
    )
    assert filled.get(timeout=60)["status"] == "filled"
    # (sent as a plain Celery client would: the producer refuses it before sending)
    from workers.app import app

    rejected = app.send_task(
        "execute_market_order",
        kwargs={
            "signal_id": f"json-{uuid.uuid4().hex[:10]}",
            "exchange": "kraken",
            "symbol": "BTC/USDT:USDT",
            "side": "buy",
            "amount": "1",
        },
    )
    with pytest.raises(Exception, match="unknown account"):
        rejected.get(timeout=60)
    # and a task that fails unexpectedly (a call it cannot take)
    broken = app.send_task("ping", kwargs={"not_an_argument": 1})
    with pytest.raises(TypeError):
        broken.get(timeout=60)
    # and is stopped (Celery's shutdown notice comes from a signal handler)
    worker.stop()

    # Then every line it printed is a JSON object
    logged = records(worker)
    messages = [record["message"] for record in logged]
    assert any(message.startswith("celery worker starting") for message in messages)
    assert any(message.endswith("ready.") for message in messages)
    assert any("Warm shutdown" in message for message in messages)
    # with the order's events as fields, tied to the task that recorded them
    fills = [record for record in logged if record.get("event") == "order_filled"]
    assert len(fills) == 1
    assert fills[0]["client_order_id"] == filled.get()["client_order_id"]
    assert fills[0]["task_id"] == filled.id and fills[0]["task_name"] == "execute_market_order"
    # and the refused signal in one record of its own (an expected failure: no traceback)
    refusals = [record for record in logged if "SignalRejected" in record["message"]]
    assert refusals and all("\n" not in record["message"] for record in refusals)
    # and the unexpected failure's traceback inside its record, not on lines of its own
    failures = [record for record in logged if record["level"] == "ERROR" and "exc" in record]
    assert any("TypeError" in record["exc"] for record in failures)


def test_a_json_beat_prints_only_json_lines(tmp_path: Path):
    from workers.harness.services import start_private_redis

    server = start_private_redis(tmp_path, "redis://127.0.0.1/0", die_with_parent=True)
    beat = ManagedProcess(
        "beat",
        [sys.executable, "-m", "celery", "-A", "workers", "beat", "-l", "INFO"],
        env={**JSON_ENV, "REDIS_URL": server.url, "EXECQ_AGED_SWEEP_INTERVAL_S": "1"},
    ).start()
    try:
        # Given a JSON beat that has sent a sweep
        client = redis.Redis.from_url(server.url)
        wait_for(lambda: client.llen("celery"), 60, message=f"no sweep sent:\n{beat.log_tail()}")
        client.close()
    finally:
        beat.stop()
        server.stop()

    # Then its banner and every line after it are JSON objects
    messages = [record["message"] for record in records(beat)]
    assert messages[0].startswith("celery beat v")
    assert any("Sending due task aged-phase-sweep" in message for message in messages)
