"""The ``signals`` outbox in PostgreSQL: recorded by producers, settled by the recovery sweep.

A signal id and its leg are an idempotency key here as in the order row
(``idempotency_key``, unique): a message whose key is recorded already is not
recorded again. The same order under it (``message_terms``) is answered with
the recorded message, which the producer sends again under its task id
(harmless: the task finds its order); another order under it is refused with
``SignalConflict``.

A row is *settled* once the store shows the signal arrived (an order row with
its client order id, or a refusal event for its signal id or its task id) or
the sweep gave up on it (``expired``). Only unsettled rows are read again,
through a partial index, so the table's history costs the sweep nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, exists, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from workers.execution.client_ids import client_order_id, leg_for
from workers.execution.outbox import OutboxSignal
from workers.execution.signal import TASK_ARGUMENTS, SignalConflict, conflict, message_terms
from workers.store.models import Event, Order, Signal

_SIGNALS = Signal.__table__
# The events that say a message reached a worker which refused it.
REFUSAL_EVENTS = ("signal_rejected", "signal_conflict")


@dataclass(frozen=True)
class OutboxMessage:
    """One task message as the producer sends it, and as the sweep would send it again."""

    task_id: str
    task_name: str
    kwargs: dict[str, Any]

    @classmethod
    def new(cls, task_name: str, kwargs: Mapping[str, Any]) -> OutboxMessage:
        return cls(task_id=str(uuid.uuid4()), task_name=task_name, kwargs=dict(kwargs))


def _expected_client_order_id(kwargs: Mapping[str, Any]) -> str | None:
    """The id the task will give the order, or None when the signal cannot have one
    (validation then rejects it, and the rejection is found by signal id)."""
    signal_id, purpose, leg = (
        kwargs.get("signal_id"),
        kwargs.get("purpose", "open"),
        kwargs.get("leg"),
    )
    if not isinstance(signal_id, str) or not isinstance(purpose, str):
        return None
    try:
        return client_order_id(signal_id, leg_for(purpose, leg))
    except ValueError:
        return None


def _idempotency_key(message: OutboxMessage) -> str | None:
    if message.task_name not in TASK_ARGUMENTS:
        return None
    return _expected_client_order_id(message.kwargs)


def _recorded_under(connection: Connection, keys: Iterable[str]) -> dict[str, OutboxMessage]:
    rows = connection.execute(
        select(
            _SIGNALS.c.task_id, _SIGNALS.c.task_name, _SIGNALS.c.kwargs, _SIGNALS.c.idempotency_key
        ).where(_SIGNALS.c.idempotency_key.in_(list(keys)))
    ).all()
    return {
        row.idempotency_key: OutboxMessage(row.task_id, row.task_name, dict(row.kwargs))
        for row in rows
    }


def _refusal_of(earlier: OutboxMessage, message: OutboxMessage) -> SignalConflict | None:
    kwargs = message.kwargs
    return conflict(
        str(kwargs.get("signal_id")),
        leg_for(str(kwargs.get("purpose", "open")), kwargs.get("leg")),
        message_terms(earlier.task_name, earlier.kwargs),
        message_terms(message.task_name, message.kwargs),
    )


class OutboxConflict(Exception):
    """A message's key is recorded for another order; the caller rolls the batch back."""

    def __init__(self, message: OutboxMessage, refusal: SignalConflict) -> None:
        super().__init__(str(refusal))
        self.message = message
        self.refusal = refusal


_INSERT_NEW = (
    postgresql.insert(_SIGNALS)
    .on_conflict_do_nothing(index_elements=[_SIGNALS.c.idempotency_key])
    .returning(_SIGNALS.c.task_id)
)


def record_signals(
    connection: Connection, messages: Sequence[OutboxMessage]
) -> list[OutboxMessage]:
    """Record ``messages`` in the caller's transaction; returns, for each, the message to
    send: itself, or the one recorded under its key (earlier, or earlier in this batch)
    for the same order.

    One INSERT; a key recorded already is skipped by the unique index (a concurrent
    producer's uncommitted one is waited for). Raises ``OutboxConflict`` for a message
    whose key is recorded for another order: the caller rolls the batch back.
    """
    keys = {message.task_id: _idempotency_key(message) for message in messages}
    inserted = set(
        connection.execute(
            _INSERT_NEW,
            [
                {
                    "task_id": message.task_id,
                    "task_name": message.task_name,
                    "signal_id": str(message.kwargs.get("signal_id")),
                    "client_order_id": _expected_client_order_id(message.kwargs),
                    "idempotency_key": keys[message.task_id],
                    "kwargs": message.kwargs,
                    "sends": 1,
                }
                for message in messages
            ],
        ).scalars()
    )
    skipped = {keys[message.task_id] for message in messages if message.task_id not in inserted}
    recorded = _recorded_under(connection, skipped) if skipped else {}
    to_send = []
    for message in messages:
        if message.task_id in inserted:
            to_send.append(message)
            continue
        earlier = recorded[keys[message.task_id]]
        refusal = _refusal_of(earlier, message)
        if refusal is not None:
            raise OutboxConflict(message, refusal)
        to_send.append(earlier)
    return to_send


def _arrived():
    """True for a signal row whose order row or refusal is in the store.

    A refusal is found by its signal id, or by the task id the refusing task
    recorded: a signal id the event could not store as it is (longer than its
    column, or with characters it had to escape) still settles its message.
    """
    order_row = exists().where(Order.client_order_id == Signal.client_order_id)
    by_signal_id = exists().where(
        Event.signal_id == Signal.signal_id, Event.type.in_(REFUSAL_EVENTS)
    )
    by_task_id = exists().where(
        Event.type.in_(REFUSAL_EVENTS),
        Event.occurred_at >= Signal.created_at,
        Event.payload["task_id"].astext == Signal.task_id,
    )
    return order_row | by_signal_id | by_task_id


def settle_arrived(session: Session, now: datetime, task_ids: Iterable[str] | None = None) -> int:
    """Mark the unsettled signals that have arrived (all, or only ``task_ids``); returns how many."""
    statement = (
        update(Signal)
        .where(Signal.settled_at.is_(None), _arrived())
        .values(settled_at=now, outcome="arrived")
    )
    if task_ids is not None:
        statement = statement.where(Signal.task_id.in_(list(task_ids)))
    return session.execute(statement, execution_options={"synchronize_session": False}).rowcount


def unsettled_sent_before(session: Session, before: datetime, limit: int = 500) -> list[Signal]:
    """Signals not seen arriving whose last send is older than ``before``, oldest first."""
    return list(
        session.scalars(
            select(Signal)
            .where(Signal.settled_at.is_(None), Signal.last_sent_at < before)
            .order_by(Signal.last_sent_at)
            .limit(limit)
        )
    )


def outbox_view(row: Signal) -> OutboxSignal:
    return OutboxSignal(
        task_id=row.task_id,
        created_at=row.created_at,
        last_sent_at=row.last_sent_at,
        sends=row.sends,
    )


def message_of(row: Signal) -> OutboxMessage:
    return OutboxMessage(task_id=row.task_id, task_name=row.task_name, kwargs=dict(row.kwargs))


def mark_sent_again(session: Session, task_id: str, now: datetime) -> None:
    session.execute(
        update(Signal)
        .where(Signal.task_id == task_id)
        .values(sends=Signal.sends + 1, last_sent_at=now),
        execution_options={"synchronize_session": False},
    )


def mark_expired(session: Session, task_id: str, now: datetime) -> None:
    session.execute(
        update(Signal)
        .where(Signal.task_id == task_id, Signal.settled_at.is_(None))
        .values(settled_at=now, outcome="expired"),
        execution_options={"synchronize_session": False},
    )


def undelivered_count(connection: Connection) -> int:
    """Recorded signals that have not arrived in the store and were not given up on."""
    return int(
        connection.execute(
            select(func.count()).select_from(Signal).where(Signal.settled_at.is_(None), ~_arrived())
        ).scalar_one()
    )
