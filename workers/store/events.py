"""Append-only events and alerts, written in the caller's transaction.

Writing the event in the same transaction as the state change it describes
means an acknowledged state change always has its event, and a rolled-back
one never does. A transaction's events are collected as it runs and written
by one batched INSERT just before it commits: an order's hot path records
several events per transaction, and one batched INSERT costs a fraction of
one ORM object each.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import String, event, insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from workers.observability import metrics
from workers.observability.logs import log_event
from workers.settings import get_settings
from workers.store.models import Alert, Event

logger = logging.getLogger("execq.events")


_EVENTS = Event.__table__
_PENDING_EVENTS = "pending_events"
# Every column a recorded event sets: all but the id and the server's timestamp.
_EVENT_COLUMNS = tuple(name for name in _EVENTS.c.keys() if name not in ("id", "occurred_at"))


def _recorded_rows() -> str:
    """The events passed as one JSON array ``:rows``, as a row source named ``recorded``.

    An executemany binds and executes every row on its own (3-5 per order
    transaction), which cost more worker CPU than anything else a transaction
    does; one JSON parameter is one bind and one execution. ``position_in_batch``
    keeps the ids in the order the events were recorded.
    """
    dialect = postgresql.dialect()
    # Strings arrive as text so that the INSERT's assignment checks their length
    # (a cast to varchar(n) would cut them short silently).
    typed = ", ".join(
        f"{name} "
        + (
            "text"
            if isinstance(_EVENTS.c[name].type, String)
            else _EVENTS.c[name].type.compile(dialect=dialect)
        )
        for name in _EVENT_COLUMNS
    )
    return (
        f"ROWS FROM (jsonb_to_recordset(CAST(:rows AS jsonb)) AS ({typed})) "
        f"WITH ORDINALITY AS recorded({', '.join(_EVENT_COLUMNS)}, position_in_batch)"
    )


_RECORDED_ROWS = _recorded_rows()


def insert_recorded_events(order_id_from: str | None = None) -> str:
    """SQL inserting the ``:rows`` events; ``order_id_from`` names a one-row source
    (a CTE that inserts the order) whose ``id`` becomes every event's ``order_id``."""
    source = _RECORDED_ROWS if order_id_from is None else f"{order_id_from}, {_RECORDED_ROWS}"
    selected = ", ".join(
        f"{order_id_from}.id" if name == "order_id" and order_id_from else f"recorded.{name}"
        for name in _EVENT_COLUMNS
    )
    return (
        f"INSERT INTO {_EVENTS.name} ({', '.join(_EVENT_COLUMNS)}) "  # noqa: S608 - column names only
        f"SELECT {selected} FROM {source} ORDER BY position_in_batch"
    )


_INSERT_EVENT_ROWS = text(insert_recorded_events())


def record_event(session: Session, event_type: str, **fields: Any) -> None:
    """Record an event in the session's transaction (written when it commits);
    ``fields`` are ``event_row``'s."""
    row = event_row(event_type, **fields)
    session.info.setdefault(_PENDING_EVENTS, []).append(row)
    log_event(row)


def event_row(
    event_type: str,
    *,
    order_id: int | None = None,
    position_id: int | None = None,
    aged_id: int | None = None,
    client_order_id: str | None = None,
    signal_id: str | None = None,
    account: str | None = None,
    symbol: str | None = None,
    attempt: int | None = None,
    error_class: str | None = None,
    payload: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One event as the row ``insert_recorded_events`` writes (nothing is written or logged)."""
    return {
        "type": event_type,
        "order_id": order_id,
        "position_id": position_id,
        "aged_id": aged_id,
        "client_order_id": client_order_id,
        "signal_id": signal_id,
        "account": account,
        "symbol": symbol,
        "attempt": attempt,
        "error_class": error_class,
        "payload": dict(payload or {}),
    }


def write_events(session: Session) -> list[int]:
    """Write the events recorded so far in this transaction now; their ids, in order."""
    rows = session.info.pop(_PENDING_EVENTS, None)
    if not rows:
        return []
    statement = insert(_EVENTS).returning(_EVENTS.c.id, sort_by_parameter_order=True)
    return list(session.connection().execute(statement, rows).scalars())


def take_recorded_events(session: Session) -> str | None:
    """The events recorded so far in this transaction as ``:rows`` JSON, for a statement
    that writes them itself (``insert_recorded_events``); None when there are none."""
    rows = session.info.pop(_PENDING_EVENTS, None)
    return json.dumps(rows) if rows else None


@event.listens_for(Session, "before_commit")
def _write_recorded_events(session: Session) -> None:
    rows = take_recorded_events(session)
    if rows is not None:
        session.connection().execute(_INSERT_EVENT_ROWS, {"rows": rows})


def raise_alert(
    session: Session,
    kind: str,
    message: str,
    *,
    severity: str = "critical",
    account: str | None = None,
    symbol: str | None = None,
    order_id: int | None = None,
    position_id: int | None = None,
    aged_id: int | None = None,
    payload: Mapping[str, Any] | None = None,
) -> Alert:
    alert = Alert(
        severity=severity,
        kind=kind,
        message=message,
        account=account,
        symbol=symbol,
        order_id=order_id,
        position_id=position_id,
        aged_id=aged_id,
        payload=dict(payload or {}),
    )
    session.add(alert)
    record_event(
        session,
        "alert_raised",
        order_id=order_id,
        position_id=position_id,
        aged_id=aged_id,
        account=account,
        symbol=symbol,
        payload={"kind": kind, "severity": severity, "message": message, **dict(payload or {})},
    )
    metrics.observe_alert(kind, severity)
    if severity == "critical":
        session.info.setdefault("pending_alerts", []).append(
            {
                "kind": kind,
                "severity": severity,
                "message": message,
                "account": account,
                "symbol": symbol,
                "order_id": order_id,
                "position_id": position_id,
                "aged_id": aged_id,
                "payload": dict(payload or {}),
            }
        )
    log = logger.critical if severity == "critical" else logger.warning
    log("ALERT %s [%s] %s", kind, severity, message)
    return alert


@event.listens_for(Session, "after_commit")
def _post_committed_alerts(session: Session) -> None:
    """Critical alerts go to the webhook only once their transaction has committed."""
    pending = session.info.pop("pending_alerts", None)
    if not pending or not get_settings().alert_webhook_url:
        return
    from workers.app import app

    for alert in pending:
        app.send_task("send_alert_webhook", kwargs={"alert": alert})


@event.listens_for(Session, "after_rollback")
def _drop_rolled_back_alerts(session: Session) -> None:
    session.info.pop("pending_alerts", None)
    session.info.pop(_PENDING_EVENTS, None)
