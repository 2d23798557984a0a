"""The broker transport (workers/broker.py) against the real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import pytest
import redis
from kombu import Connection

from tests.conftest import TEST_REDIS_URL
from workers.app import app
from workers.celery_ext.broker import Channel, Transport, transport_for


@pytest.fixture
def connection(redis_clean: None) -> Iterator[Connection]:
    with Connection(TEST_REDIS_URL, transport=transport_for(TEST_REDIS_URL)) as conn:
        yield conn


def test_redis_urls_use_the_reusing_transport_and_others_keep_kombus() -> None:
    assert transport_for("redis://127.0.0.1:6379/0") == "workers.celery_ext.broker:Transport"
    assert (
        transport_for("rediss://cache.example:6380/0") == "workers.celery_ext.broker:TlsTransport"
    )
    assert transport_for("sentinel://127.0.0.1:26379") is None
    assert app.connection_for_write().transport_cls == "workers.celery_ext.broker:Transport"


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


@pytest.mark.services
def test_a_worker_keeps_consuming_after_redis_restarts_with_orders_in_flight(
    workers, db, sim, tmp_path
) -> None:
    """Redis restarts while orders wait on the exchange and the consumer waits on BRPOP.

    kombu 5.7 with Celery 5.7 took the worker's consumer down for good there (an
    ``AttributeError`` while closing the broken connection): the process stayed up
    and never took another task.
    """
    from tests.conftest import free_port
    from workers.harness.bench import client_app
    from workers.harness.services import ensure_services

    with ensure_services(
        f"redis://127.0.0.1:{free_port()}/0", os.environ["DATABASE_URL"], tmp_path
    ) as services:
        assert services.started == ["redis"]
        with closing(client_app(services.redis_url)) as broker:
            # Four threads, two orders: the consumer has room, so it waits in BRPOP.
            worker = workers.spawn(concurrency=4, env={"REDIS_URL": services.redis_url})
            workers.wait_ready(worker, broker=broker)
            orders_in_flight_survive_a_redis_restart(
                broker, worker, sim, lambda: services.restart_redis(keep_data=True)
            )


def orders_in_flight_survive_a_redis_restart(
    broker: Any, worker: Any, sim: Any, restart: Callable[[], None]
) -> None:
    """Two orders wait 3 s on the exchange while ``restart`` restarts Redis under the
    ready ``worker``: it takes the next order, and each in-flight one fills exactly once."""
    from tests.conftest import wait_for
    from workers.execution.client_ids import client_order_id
    from workers.producer import order_kwargs
    from workers.store.orders import load_order

    btc = "BTC/USDT:USDT"
    sim.faults({"rules": [{"kind": "latency", "latency_ms": 3000, "operation": "create_order"}]})
    in_flight = [f"restart-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for signal_id in in_flight:
        broker.send_task(
            "execute_market_order", kwargs=order_kwargs(signal_id, "binance", btc, "buy", "0.01")
        )
    cids = [client_order_id(signal_id, "open") for signal_id in in_flight]
    wait_for(
        lambda: all((order := load_order(cid)) and order.status == "submitting" for cid in cids),
        30,
        message="the orders did not reach the exchange call",
    )

    restart()
    sim.faults({"rules": []})

    after = broker.send_task(
        "execute_market_order",
        kwargs=order_kwargs(f"restart-{uuid.uuid4().hex[:12]}", "binance", btc, "buy", "0.01"),
    )
    assert after.get(timeout=60)["status"] == "filled", worker.log_tail()
    assert worker.alive
    for cid in cids:
        wait_for(lambda cid=cid: load_order(cid).status == "filled", 60)
        assert len(sim.orders_for(cid)) == 1
