"""The outbox's delivery verdict: wait while the broker has it, resend with backoff, give up when stale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from workers.execution.outbox import (
    MAX_BACKOFF_DOUBLINGS,
    Delivery,
    OutboxSignal,
    delivery_verdict,
)

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
RETRY_S = 30.0
MAX_AGE_S = 300.0


def signal(created_s_ago: float, sent_s_ago: float, sends: int = 1, now: datetime = T0):
    return OutboxSignal(
        task_id="t1",
        created_at=now - timedelta(seconds=created_s_ago),
        last_sent_at=now - timedelta(seconds=sent_s_ago),
        sends=sends,
    )


def verdict(record: OutboxSignal, *, in_broker: bool = False, now: datetime = T0) -> Delivery:
    return delivery_verdict(
        record, now, in_broker=in_broker, retry_after_s=RETRY_S, max_age_s=MAX_AGE_S
    )


def test_a_signal_sent_once_and_gone_from_the_broker_is_sent_again_after_the_window():
    assert verdict(signal(31, 31)) is Delivery.REDELIVER


def test_a_signal_just_sent_is_given_time_to_arrive():
    assert verdict(signal(10, 10)) is Delivery.WAIT


def test_a_signal_still_in_the_broker_waits_however_old():
    # A backlog: the message is queued (or reserved by a worker), not lost.
    assert verdict(signal(3600, 3600), in_broker=True) is Delivery.WAIT


def test_a_signal_older_than_the_resubmit_age_is_given_up():
    assert verdict(signal(301, 31)) is Delivery.EXPIRE


def test_each_resend_waits_twice_as_long_as_the_last():
    assert verdict(signal(100, 59, sends=2)) is Delivery.WAIT
    assert verdict(signal(100, 60, sends=2)) is Delivery.REDELIVER
    assert verdict(signal(200, 119, sends=3)) is Delivery.WAIT
    assert verdict(signal(200, 120, sends=3)) is Delivery.REDELIVER


sends = st.integers(min_value=1, max_value=50)
seconds = st.floats(min_value=0, max_value=10_000, allow_nan=False)


@given(sends=sends, created=seconds, since_sent=seconds, in_broker=st.booleans())
def test_the_verdict_follows_the_rule(sends, created, since_sent, in_broker):
    since_sent = min(since_sent, created)  # a signal is sent no earlier than it is created
    result = verdict(signal(created, since_sent, sends), in_broker=in_broker)
    backoff = RETRY_S * 2 ** min(sends - 1, MAX_BACKOFF_DOUBLINGS)
    if in_broker:
        assert result is Delivery.WAIT
    elif created > MAX_AGE_S:
        assert result is Delivery.EXPIRE
    elif since_sent < backoff:
        assert result is Delivery.WAIT
    else:
        assert result is Delivery.REDELIVER


@given(sends=sends, created=seconds, since_sent=seconds, later=seconds)
def test_waiting_longer_never_turns_a_resend_back_into_a_wait(sends, created, since_sent, later):
    since_sent = min(since_sent, created)
    record = signal(created, since_sent, sends)
    first = verdict(record)
    second = verdict(record, now=T0 + timedelta(seconds=later))
    if first is Delivery.REDELIVER:
        assert second in (Delivery.REDELIVER, Delivery.EXPIRE)
    if first is Delivery.EXPIRE:
        assert second is Delivery.EXPIRE
