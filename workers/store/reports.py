"""Read-only queries for the operator CLI and the HTTP API: status, events, statistics,
one signal's record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import case, func, select

from workers.execution.aged_state import TRACKED, AgedStatus
from workers.execution.order_state import IN_FLIGHT
from workers.execution.position_state import HELD, status_values
from workers.store.db import session_scope
from workers.store.models import AgedPosition, Alert, Event, Order, Position, Signal
from workers.store.orders import OrderSnapshot


def open_positions() -> list[dict[str, Any]]:
    with session_scope() as session:
        rows = session.scalars(
            select(Position)
            .where(Position.status.in_(status_values(HELD)))
            .order_by(Position.opened_at)
        ).all()
        return [
            {
                "id": row.id,
                "account": row.account,
                "symbol": row.symbol,
                "side": row.side,
                "size": row.size,
                "entry_price": row.entry_price,
                "opened_at": row.opened_at,
                "verification": row.verification,
            }
            for row in rows
        ]


def _aged_terms(aged: AgedPosition, position: Position) -> dict[str, Any]:
    return {
        "id": aged.id,
        "position_id": position.id,
        "account": position.account,
        "symbol": position.symbol,
        "side": position.side,
        "size": position.size,
        "entry_price": position.entry_price,
        "status": aged.status,
        "phase": aged.phase,
        "target_price": aged.target_price,
    }


def active_aged() -> list[dict[str, Any]]:
    with session_scope() as session:
        rows = session.execute(
            select(AgedPosition, Position)
            .join(Position, Position.id == AgedPosition.position_id)
            .where(AgedPosition.status.in_(status_values(TRACKED)))
            .order_by(AgedPosition.id)
        ).all()
        return [
            {
                **_aged_terms(aged, position),
                "loss_tolerance_percent": aged.loss_tolerance_percent
                + aged.extra_tolerance_percent,
                "attempts": aged.attempts,
                "consecutive_failures": aged.consecutive_failures,
                "detected_at": aged.detected_at,
                "phase_changed_at": aged.phase_changed_at,
                "target_reached_at": aged.target_reached_at,
                "last_error": aged.last_error,
            }
            for aged, position in rows
        ]


def orders_in_flight(limit: int = 20) -> tuple[dict[str, int], list[dict[str, Any]]]:
    statuses = [status.value for status in IN_FLIGHT]
    with session_scope() as session:
        counts = dict(
            session.execute(
                select(Order.status, func.count())
                .where(Order.status.in_(statuses))
                .group_by(Order.status)
            ).all()
        )
        rows = session.scalars(
            select(Order).where(Order.status.in_(statuses)).order_by(Order.id).limit(limit)
        ).all()
        return counts, [
            {
                "client_order_id": row.client_order_id,
                "account": row.account,
                "symbol": row.symbol,
                "side": row.side,
                "amount": row.amount,
                "status": row.status,
                "updated_at": row.updated_at,
                "id": row.id,
                "signal_id": row.signal_id,
                "order_type": row.order_type,
                "price": row.price,
                "filled": row.filled,
                "reduce_only": row.reduce_only,
                "created_at": row.created_at,
            }
            for row in rows
        ]


def recent_events(
    *,
    types: tuple[str, ...] = (),
    symbol: str | None = None,
    order: str | None = None,
    aged_id: int | None = None,
    signal_id: str | None = None,
    position_id: int | None = None,
    after_id: int = 0,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The latest ``limit`` events matching every filter given (oldest first); with
    ``after_id``, the first ``limit`` after it."""
    query = select(Event)
    if types:
        query = query.where(Event.type.in_(types))
    if symbol:
        query = query.where(Event.symbol == symbol)
    if order:
        if order.isdigit():
            query = query.where(Event.order_id == int(order))
        else:
            query = query.where(Event.client_order_id == order)
    if aged_id is not None:
        query = query.where(Event.aged_id == aged_id)
    if signal_id is not None:
        query = query.where(Event.signal_id == signal_id)
    if position_id is not None:
        query = query.where(Event.position_id == position_id)
    if after_id:
        query = query.where(Event.id > after_id).order_by(Event.id).limit(limit)
    else:
        query = query.order_by(Event.id.desc()).limit(limit)
    with session_scope() as session:
        rows = session.scalars(query).all()
        events = [
            {
                "id": row.id,
                "type": row.type,
                "occurred_at": row.occurred_at,
                "account": row.account,
                "symbol": row.symbol,
                "client_order_id": row.client_order_id,
                "signal_id": row.signal_id,
                "order_id": row.order_id,
                "position_id": row.position_id,
                "aged_id": row.aged_id,
                "attempt": row.attempt,
                "error_class": row.error_class,
                "payload": row.payload,
            }
            for row in rows
        ]
    return sorted(events, key=lambda event: event["id"])


# Alerts ranked for a person: critical before warnings, then the newest first.
_SEVERITY_RANK = case((Alert.severity == "critical", 0), (Alert.severity == "warning", 1), else_=2)


def recent_alerts(*, since: datetime, limit: int = 30) -> list[dict[str, Any]]:
    """Alerts raised since ``since``: critical first, then the newest first."""
    with session_scope() as session:
        rows = session.scalars(
            select(Alert)
            .where(Alert.occurred_at >= since)
            .order_by(_SEVERITY_RANK, Alert.occurred_at.desc(), Alert.id.desc())
            .limit(limit)
        ).all()
        return [
            {
                "id": row.id,
                "severity": row.severity,
                "kind": row.kind,
                "message": row.message,
                "occurred_at": row.occurred_at,
                "account": row.account,
                "symbol": row.symbol,
                "order_id": row.order_id,
                "position_id": row.position_id,
                "aged_id": row.aged_id,
                "acknowledged_at": row.acknowledged_at,
            }
            for row in rows
        ]


def aged_episode(aged_id: int) -> dict[str, Any] | None:
    """One aged episode (any status) with its position's terms, or None."""
    with session_scope() as session:
        row = session.execute(
            select(AgedPosition, Position)
            .join(Position, Position.id == AgedPosition.position_id)
            .where(AgedPosition.id == aged_id)
        ).one_or_none()
        if row is None:
            return None
        aged, position = row
        return {
            **_aged_terms(aged, position),
            "detected_at": aged.detected_at,
            "phase_changed_at": aged.phase_changed_at,
            "close_price": aged.close_price,
            "close_reason": aged.close_reason,
            "closed_at": aged.closed_at,
        }


def aged_statistics(days: float) -> dict[str, Any]:
    """Weekly statistics over aged positions detected in the window."""
    since = datetime.now(UTC) - timedelta(days=days)
    with session_scope() as session:
        rows = session.scalars(select(AgedPosition).where(AgedPosition.detected_at >= since)).all()
        alerts = session.scalar(
            select(func.count()).select_from(Alert).where(Alert.occurred_at >= since)
        )
    closed = [row for row in rows if row.status == AgedStatus.CLOSED]
    by_status: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    for row in closed:
        by_reason[row.close_reason or "?"] = by_reason.get(row.close_reason or "?", 0) + 1
    attempts = sum(row.attempts for row in rows)
    durations = [row.close_duration_ms for row in closed if row.close_duration_ms is not None]
    return {
        "days": days,
        "aged_positions": len(rows),
        "by_status": by_status,
        "closed": len(closed),
        # Share of close attempts that closed the position (seed 001 asks > 95 %).
        "success_rate": None if attempts == 0 else round(len(closed) / attempts, 4),
        "average_attempts": None
        if not closed
        else round(sum(row.attempts for row in closed) / len(closed), 2),
        # From the first observed price at or past the target to the close's last fill.
        "average_close_after_target_ms": None
        if not durations
        else round(sum(durations) / len(durations)),
        "closes_by_reason": by_reason,
        "realized_pnl": str(sum((row.close_pnl or Decimal(0) for row in closed), Decimal(0))),
        "alerts": alerts or 0,
    }


@dataclass(frozen=True)
class SignalRecord:
    """What the store holds of one signal id: its orders, its outbox messages and its
    latest events (oldest first)."""

    signal_id: str
    orders: list[OrderSnapshot]
    messages: list[dict[str, Any]]
    events: list[dict[str, Any]]

    @property
    def known(self) -> bool:
        return bool(self.orders or self.messages or self.events)


def signal_record(signal_id: str, event_limit: int = 200) -> SignalRecord:
    """The orders, outbox messages and last ``event_limit`` events of ``signal_id``."""
    with session_scope() as session:
        orders = [
            OrderSnapshot.of(row)
            for row in session.scalars(
                select(Order).where(Order.signal_id == signal_id).order_by(Order.id)
            )
        ]
        messages = [
            {
                "task_id": row.task_id,
                "task_name": row.task_name,
                "created_at": row.created_at,
                "sends": row.sends,
                "settled_at": row.settled_at,
                "outcome": row.outcome,
            }
            for row in session.scalars(
                select(Signal).where(Signal.signal_id == signal_id).order_by(Signal.created_at)
            )
        ]
        rows = session.scalars(
            select(Event)
            .where(Event.signal_id == signal_id)
            .order_by(Event.id.desc())
            .limit(event_limit)
        ).all()
        events = [
            {
                "id": row.id,
                "type": row.type,
                "occurred_at": row.occurred_at,
                "client_order_id": row.client_order_id,
                "order_id": row.order_id,
                "attempt": row.attempt,
                "error_class": row.error_class,
                "payload": row.payload,
            }
            for row in reversed(rows)
        ]
    return SignalRecord(signal_id, orders, messages, events)
