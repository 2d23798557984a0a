"""The producers' outbox: a signal the broker lost is sent again by the recovery sweep, once.

The loss it repairs (chaos finding 11): kombu's Redis transport pops a message
(BRPOP) before it records it as unacknowledged, so a worker killed in between
takes it away with no trace. These tests pop the message off the real queue
themselves, which leaves exactly that state: recorded in the outbox, in no
queue, in no unacknowledged set, nothing in the store.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from tests.conftest import wait_for

ETH = "ETH/USDT:USDT"


def produce(signal_id: str, amount: str = "0.1"):
    from workers.producer import default_producer, order_kwargs

    return default_producer().send(
        "execute_market_order", order_kwargs(signal_id, "binance", ETH, "buy", amount)
    )


def age_signal(task_id: str, seconds: float) -> None:
    """Move the signal's creation and last send into the past (the sweep's windows)."""
    from workers.store.db import session_scope
    from workers.store.models import Signal

    with session_scope() as session:
        session.execute(
            update(Signal)
            .where(Signal.task_id == task_id)
            .values(
                created_at=Signal.created_at - timedelta(seconds=seconds),
                last_sent_at=Signal.last_sent_at - timedelta(seconds=seconds),
            )
        )


def sweep_signals() -> dict[str, int]:
    from workers.flows.recovery import redeliver_lost_signals
    from workers.settings import get_settings

    return dict(redeliver_lost_signals(get_settings(), datetime.now(UTC)))


def pop_like_a_dying_worker() -> None:
    from workers.redis_client import get_redis

    assert get_redis().rpop("celery") is not None


def queued() -> int:
    from workers.redis_client import get_redis

    return get_redis().llen("celery")


def outbox_row(task_id: str):
    from workers.store.db import session_scope
    from workers.store.models import Signal

    with session_scope() as session:
        return session.get(Signal, task_id)


def count(model, *where) -> int:
    from workers.store.db import session_scope

    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def test_a_signal_popped_and_lost_is_sent_again_and_executed_once(workers, db, redis_clean, sim):
    from workers.execution.client_ids import client_order_id
    from workers.store.models import Event

    # Given a recorded signal whose message waits in the queue (no worker runs yet)
    signal_id = f"ob-{uuid.uuid4().hex[:10]}"
    result = produce(signal_id)
    age_signal(result.id, 60)

    # Then a sweep leaves it alone while the broker still has it
    assert sweep_signals().get("signals_in_broker") == 1
    assert queued() == 1

    # When a consumer pops it and dies before recording it as unacknowledged
    pop_like_a_dying_worker()
    counts = sweep_signals()

    # Then the sweep sends it again, under the same task id
    assert counts.get("signals_redelivered") == 1
    assert queued() == 1
    assert outbox_row(result.id).sends == 2
    assert count(Event, Event.type == "signal_redelivered", Event.signal_id == signal_id) == 1

    # And a worker executes it once; the producer's result handle resolves
    workers.start(concurrency=2)
    summary = result.get(timeout=60)
    cid = client_order_id(signal_id, "open")
    assert summary["status"] == "filled"
    assert len(sim.orders_for(cid)) == 1

    # And the next sweep sees it arrived and never sends it again
    wait_for(lambda: sweep_signals().get("signals_arrived") == 1, 10, message="not marked arrived")
    assert outbox_row(result.id).outcome == "arrived"
    assert sweep_signals() == {"signals_arrived": 0}


def test_a_signal_reserved_by_a_consumer_is_not_sent_again(workers, db, redis_clean):
    from workers.app import app
    from workers.redis_client import get_redis

    # Given a recorded signal that a consumer has reserved (kombu's own basic_get:
    # popped and recorded as unacknowledged, the state of a prefetched message)
    result = produce(f"ob-{uuid.uuid4().hex[:10]}")
    age_signal(result.id, 60)
    with app.connection_for_write() as connection:
        reserved = connection.default_channel.basic_get("celery", no_ack=False)
        assert reserved is not None and queued() == 0
        assert get_redis().hlen("unacked") == 1

        # When the sweep runs
        counts = sweep_signals()

        # Then it waits for that consumer instead of sending a copy
        assert counts.get("signals_in_broker") == 1
        assert queued() == 0 and outbox_row(result.id).sends == 1
        reserved.ack()


def test_a_signal_that_arrived_is_not_sent_again(worker, sim):
    # Given a signal executed normally
    result = produce(f"ob-{uuid.uuid4().hex[:10]}")
    assert result.get(timeout=60)["status"] == "filled"
    age_signal(result.id, 60)

    # When the sweep runs long after
    counts = sweep_signals()

    # Then it is settled as arrived, not sent again
    assert counts == {"signals_arrived": 1}
    assert outbox_row(result.id).sends == 1


def test_a_lost_signal_past_the_resubmit_age_is_rejected_and_alerted_not_sent(
    workers, db, redis_clean, sim
):
    from workers.settings import get_settings
    from workers.store.models import Alert, Event

    # Given a signal lost by the broker long ago
    signal_id = f"ob-{uuid.uuid4().hex[:10]}"
    result = produce(signal_id)
    pop_like_a_dying_worker()
    age_signal(result.id, get_settings().recovery_resubmit_max_age_s + 1)

    # When the sweep finds it
    counts = sweep_signals()

    # Then it is given up: a delivery rejection and a critical alert, nothing enqueued
    assert counts.get("signals_expired") == 1
    assert queued() == 0
    assert outbox_row(result.id).outcome == "expired"
    assert (
        count(
            Event,
            Event.type == "signal_rejected",
            Event.signal_id == signal_id,
            Event.payload["field"].astext == "delivery",
        )
        == 1
    )
    assert count(Alert, Alert.kind == "signal_undelivered", Alert.severity == "critical") == 1
    assert sim.ledger() == []
    assert sweep_signals() == {"signals_arrived": 0}


def test_a_producer_whose_broker_is_down_keeps_the_signal_for_later(
    workers, db, redis_clean, redis_server
):
    import pytest

    from workers.app import app
    from workers.harness.bench import client_app
    from workers.harness.services import free_port
    from workers.producer import NotEnqueued, Producer, order_kwargs
    from workers.store.db import get_engine

    # Given a producer whose broker does not answer (its result store does)
    down = client_app(redis_server)
    down.conf.broker_url = f"redis://127.0.0.1:{free_port()}/0"
    down.conf.broker_connection_timeout = 1
    kwargs = order_kwargs(f"ob-{uuid.uuid4().hex[:10]}", "binance", ETH, "buy", "0.1")

    # When it sends, it is told the signal is recorded but not enqueued
    with pytest.raises(NotEnqueued) as refused:
        Producer(down, get_engine()).send("execute_market_order", kwargs)
    (message,) = refused.value.messages
    assert outbox_row(message.task_id).settled_at is None

    # And publishing the recorded message once the broker is back enqueues that same task
    (result,) = Producer(app, get_engine()).publish(refused.value.messages)
    assert result.id == message.task_id
    assert queued() == 1
