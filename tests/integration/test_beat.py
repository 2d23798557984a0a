"""A bare ``celery -A workers beat`` outlives Redis errors and sends the sweeps again."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import ManagedProcess, wait_for
from workers.harness.stack import REDBEAT_LOCK_KEY


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[object]:
    from workers.harness.services import start_private_redis

    server = start_private_redis(tmp_path, "redis://127.0.0.1/0", die_with_parent=True)
    yield server
    server.stop()


def sent_sweeps(url: str) -> list[str]:
    """The task names beat has queued on the broker at ``url`` (no worker takes them)."""
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        messages = client.lrange("celery", 0, -1)
    except redis.ConnectionError:
        return []
    finally:
        client.close()
    return [json.loads(message)["headers"]["task"] for message in messages]


def test_beat_keeps_running_through_a_redis_restart_and_sends_sweeps_again(private_redis):
    url = private_redis.url
    beat = ManagedProcess(
        "beat",
        [sys.executable, "-m", "celery", "-A", "workers", "beat", "-l", "INFO"],
        env={"REDIS_URL": url, "EXECQ_AGED_SWEEP_INTERVAL_S": "1"},
    ).start()
    try:
        # Given a bare beat sending the aged sweep every second
        wait_for(
            lambda: "aged_phase_sweep" in sent_sweeps(url),
            60,
            interval_s=0.2,
            message=f"beat sent no sweep:\n{beat.log_tail()}",
        )

        # When Redis goes away long enough for beat to notice
        private_redis.stop()
        wait_for(
            lambda: "Redis unavailable" in beat.log_tail(200) or not beat.alive,
            60,
            interval_s=0.2,
            message=f"beat never noticed Redis was gone:\n{beat.log_tail()}",
        )
        assert beat.alive, beat.log_tail()

        # and comes back without its data: the lock, the schedule and the queue are gone
        private_redis.start()
        assert sent_sweeps(url) == []

        # Then the same beat takes its lock again and sends the sweeps again
        wait_for(
            lambda: "aged_phase_sweep" in sent_sweeps(url),
            60,
            interval_s=0.2,
            message=f"no sweep after Redis came back:\n{beat.log_tail()}",
        )
        assert beat.alive
        assert redis.Redis.from_url(url).get(REDBEAT_LOCK_KEY) is not None
    finally:
        beat.stop()
