"""The broker transport (workers/broker.py) against the real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from tests.conftest import TEST_REDIS_URL
from workers.app import app
from workers.broker import Channel, Transport, transport_for


@pytest.fixture
def connection(redis_clean: None) -> Iterator[Connection]:
    with Connection(TEST_REDIS_URL, transport=transport_for(TEST_REDIS_URL)) as conn:
        yield conn


def test_redis_urls_use_the_reusing_transport_and_others_keep_kombus() -> None:
    assert transport_for("redis://127.0.0.1:6379/0") == "workers.broker:Transport"
    assert transport_for("rediss://cache.example:6380/0") is None
    assert transport_for("sentinel://127.0.0.1:26379") is None
    assert app.connection_for_write().transport_cls == "workers.broker:Transport"


def test_messages_round_trip_and_acks_share_one_client(connection: Connection) -> None:
    assert isinstance(connection.transport, Transport)
    queue = connection.SimpleQueue("execq-broker-test")
    try:
        for number in range(3):
            queue.put({"n": number})
        received = []
        for _ in range(3):
            message = queue.get(timeout=5)
            received.append(message.payload["n"])
            message.ack()
        assert received == [0, 1, 2]
        channel = queue.channel
        assert isinstance(channel, Channel)
        assert channel._create_client() is channel._create_client()
        with pytest.raises(queue.Empty):
            queue.get_nowait()
        # Acknowledged through the shared client: nothing is left to be redelivered.
        assert redis.Redis.from_url(TEST_REDIS_URL).hlen("unacked") == 0
    finally:
        queue.close()


def test_a_rebuilt_pool_gets_a_new_client_and_messages_still_flow(connection: Connection) -> None:
    queue = connection.SimpleQueue("execq-broker-test")
    try:
        channel = queue.channel
        before = channel._create_client()
        # What a fork does to the channel: its pools are dropped and rebuilt on next use.
        channel._disconnect_pools()
        after = channel._create_client()
        assert after is not before
        assert after.connection_pool is channel.pool
        queue.put({"n": "after"})
        message = queue.get(timeout=5)
        message.ack()
        assert message.payload == {"n": "after"}
    finally:
        queue.close()
