"""Refused signals in the record: ``signal_rejected`` and ``signal_conflict`` events,
and the reference checks a signal needs before its intent is written.

A refusal's event columns hold the signal's id, account and symbol as
``event_text`` makes them (escaped, cut to the column): an input with a NUL or
a newline, or 10,000 characters long, is recorded, not a second failure. The
event names the Celery task id when a task refused the message, so the
recovery sweep can tell that an outbox message arrived (``workers.store.outbox``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, insert, select

from workers.execution.signal import SignalConflict, SignalRefused, event_text
from workers.observability.logs import log_event
from workers.store.db import session_scope
from workers.store.events import event_row, record_event
from workers.store.models import AgedPosition, Event, Position

SIGNAL_ID_CHARS = Event.__table__.c.signal_id.type.length
ACCOUNT_CHARS = Event.__table__.c.account.type.length
SYMBOL_CHARS = Event.__table__.c.symbol.type.length


def refusal_event(
    refusal: SignalRefused,
    arguments: Mapping[str, Any],
    *,
    task_name: str | None = None,
    task_id: str | None = None,
    order_id: int | None = None,
    client_order_id: str | None = None,
) -> dict[str, Any]:
    """The event row of a refusal of the task message ``arguments`` (not written)."""
    payload: dict[str, Any] = {"field": refusal.field, "reason": refusal.reason}
    if isinstance(refusal, SignalConflict):
        payload["fields"] = refusal.fields
    if task_name is not None:
        payload["task"] = task_name
    if task_id is not None:
        payload["task_id"] = task_id
    return event_row(
        refusal.event_type,
        order_id=order_id,
        client_order_id=client_order_id,
        signal_id=event_text(arguments.get("signal_id"), SIGNAL_ID_CHARS),
        account=event_text(arguments.get("exchange"), ACCOUNT_CHARS),
        symbol=event_text(arguments.get("symbol"), SYMBOL_CHARS),
        payload=payload,
    )


def record_refusal(row: Mapping[str, Any]) -> None:
    """Write a ``refusal_event`` row in a transaction of its own."""
    with session_scope() as session:
        fields = {name: value for name, value in row.items() if name != "type"}
        record_event(session, row["type"], **fields)


def insert_refusal(connection: Connection, row: Mapping[str, Any]) -> None:
    """Write a ``refusal_event`` row on a Core connection, in its transaction."""
    connection.execute(insert(Event.__table__), [dict(row)])
    log_event(row)


def missing_references(position_id: int | None, aged_id: int | None) -> list[str]:
    """Which of the given ids name no row (``position_id``, ``aged_id``)."""
    checks = [
        (name, model, value)
        for name, model, value in (
            ("position_id", Position, position_id),
            ("aged_id", AgedPosition, aged_id),
        )
        if value is not None
    ]
    if not checks:
        return []
    with session_scope() as session:
        return [
            name
            for name, model, value in checks
            if session.scalar(select(model.id).where(model.id == value)) is None
        ]
