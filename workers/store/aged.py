"""Aged-position rows: detection, phase moves, close outcomes. Every change is an event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from workers.store.db import session_scope
from workers.store.events import record_event
from workers.store.models import AgedPosition, Position

ACTIVE_STATUSES = ("active", "closing")


@dataclass(frozen=True)
class AgedView:
    id: int
    position_id: int
    account: str
    symbol: str
    side: str
    size: Decimal
    entry_price: Decimal
    opened_at: datetime
    status: str
    phase: str
    target_price: Decimal | None
    loss_tolerance_percent: Decimal
    extra_tolerance_percent: Decimal
    attempts: int
    consecutive_failures: int
    target_reached_at: datetime | None
    close_enqueued_at: datetime | None


def _view(aged: AgedPosition, position: Position) -> AgedView:
    return AgedView(
        id=aged.id,
        position_id=position.id,
        account=position.account,
        symbol=position.symbol,
        side=position.side,
        size=position.size,
        entry_price=position.entry_price,
        opened_at=position.opened_at,
        status=aged.status,
        phase=aged.phase,
        target_price=aged.target_price,
        loss_tolerance_percent=aged.loss_tolerance_percent,
        extra_tolerance_percent=aged.extra_tolerance_percent,
        attempts=aged.attempts,
        consecutive_failures=aged.consecutive_failures,
        target_reached_at=aged.target_reached_at,
        close_enqueued_at=aged.close_enqueued_at,
    )


def aged_ids(aged: AgedPosition, position: Position) -> dict[str, Any]:
    return {
        "aged_id": aged.id,
        "position_id": position.id,
        "account": position.account,
        "symbol": position.symbol,
    }


def load_aged(aged_id: int) -> AgedView | None:
    with session_scope() as session:
        aged = session.get(AgedPosition, aged_id)
        if aged is None:
            return None
        return _view(aged, session.get(Position, aged.position_id))


def lock_aged(session: Session, aged_id: int) -> tuple[AgedPosition, Position]:
    aged = session.scalars(
        select(AgedPosition).where(AgedPosition.id == aged_id).with_for_update()
    ).one()
    position = session.scalars(
        select(Position).where(Position.id == aged.position_id).with_for_update()
    ).one()
    return aged, position


def claim_for_close(aged_id: int, now: datetime) -> bool:
    """active -> closing, once: at most one close in flight per position."""
    with session_scope() as session:
        claimed = session.execute(
            update(AgedPosition)
            .where(AgedPosition.id == aged_id, AgedPosition.status == "active")
            .values(
                status="closing",
                close_enqueued_at=now,
                target_reached_at=func.coalesce(AgedPosition.target_reached_at, now),
                updated_at=now,
            )
        ).rowcount
        if claimed:
            aged = session.get(AgedPosition, aged_id)
            position = session.get(Position, aged.position_id)
            record_event(
                session,
                "aged_target_reached",
                **aged_ids(aged, position),
                payload={"target_price": str(aged.target_price), "phase": aged.phase},
            )
        return bool(claimed)
