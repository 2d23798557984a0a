"""The ``signals`` outbox in PostgreSQL: recorded by producers, settled by the recovery sweep.

A row is *settled* once the store shows the signal arrived (an order row with
its client order id, or a ``signal_rejected`` event for its signal id) or the
sweep gave up on it (``expired``). Only unsettled rows are read again, through
a partial index, so the table's history costs the sweep nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, exists, func, insert, select, update
from sqlalchemy.orm import Session

from workers.execution.client_ids import client_order_id, leg_for
from workers.execution.outbox import OutboxSignal
from workers.store.models import Event, Order, Signal

_SIGNALS = Signal.__table__


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


def record_signals(connection: Connection, messages: Sequence[OutboxMessage]) -> None:
    """One INSERT for all ``messages``, in the caller's transaction."""
    connection.execute(
        insert(_SIGNALS),
        [
            {
                "task_id": message.task_id,
                "task_name": message.task_name,
                "signal_id": str(message.kwargs.get("signal_id")),
                "client_order_id": _expected_client_order_id(message.kwargs),
                "kwargs": message.kwargs,
                "sends": 1,
            }
            for message in messages
        ],
    )


def _arrived():
    """True for a signal row whose order row or rejection is in the store."""
    order_row = exists().where(Order.client_order_id == Signal.client_order_id)
    rejection = exists().where(Event.signal_id == Signal.signal_id, Event.type == "signal_rejected")
    return order_row | rejection


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
