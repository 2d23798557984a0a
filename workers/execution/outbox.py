"""The producers' outbox: when a recorded signal that never arrived is sent again.

A producer records every message in ``signals`` before it enqueues it
(``workers.producer``). Kombu's Redis transport pops a message before it
records it as unacknowledged, so a worker killed (or a Redis restarted) in
between loses it with no trace in any worker; a Redis without persistence
loses every queued message when it restarts. The recovery sweep compares the
outbox with the store and asks ``delivery_verdict`` about every signal that
has no order row and no rejection yet::

    still in the broker (queued, or reserved by a worker)  -> Wait
    older than max_age_s                                   -> Expire (recorded as rejected)
    last sent less than retry_after_s x 2^(sends-1) ago    -> Wait
    otherwise                                              -> Redeliver (same task id)

Redelivering is safe whatever happened: the task derives the client order id
from the signal id and leg, so a message that was only slow, not lost, and
its redelivery make one order between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

# Backoff stops growing here: a signal that keeps vanishing is tried at least this often.
MAX_BACKOFF_DOUBLINGS = 4


class Delivery(StrEnum):
    WAIT = "wait"
    REDELIVER = "redeliver"
    EXPIRE = "expire"


@dataclass(frozen=True)
class OutboxSignal:
    """What the sweep knows about one recorded signal that has not arrived."""

    task_id: str
    created_at: datetime
    last_sent_at: datetime
    sends: int


def delivery_verdict(
    signal: OutboxSignal,
    now: datetime,
    *,
    in_broker: bool,
    retry_after_s: float,
    max_age_s: float,
) -> Delivery:
    if in_broker:
        return Delivery.WAIT
    if now - signal.created_at > timedelta(seconds=max_age_s):
        return Delivery.EXPIRE
    doublings = min(max(signal.sends - 1, 0), MAX_BACKOFF_DOUBLINGS)
    if now - signal.last_sent_at < timedelta(seconds=retry_after_s * 2**doublings):
        return Delivery.WAIT
    return Delivery.REDELIVER
