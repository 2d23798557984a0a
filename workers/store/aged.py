"""Aged-episode rows: the one guarded write, and the close record.

Every change of an episode goes through ``write_episode``: the move is
checked against ``workers.execution.aged_state`` (a field change needs a
tracked episode), applied only to a row still in the status the writer read
(compare-and-set, so a stale writer changes nothing), and its event is
appended in the same transaction.

When a position closes, ``end_with_position`` ends its episode in the
booking's transaction: ``closed`` with the record of every fill of the
episode when the closing order is the episode's own, whichever path booked
it; ``closed_externally`` or ``superseded`` otherwise. So an episode never
passes through another status on its way to ``closed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from workers.execution.aged import AgedPhase, CloseFill, close_record
from workers.execution.aged_state import CURRENT, AgedStatus, check_transition
from workers.execution.position_state import status_values
from workers.observability import metrics
from workers.store.db import session_scope
from workers.store.events import record_event
from workers.store.models import AgedPosition, Order, Position

_AGED = AgedPosition.__table__
_ORDERS = Order.__table__


@dataclass(frozen=True)
class AgedView:
    """An episode with its position, detached from any session."""

    id: int
    position_id: int
    account: str
    symbol: str
    side: str
    size: Decimal
    entry_price: Decimal
    opened_at: datetime
    status: AgedStatus
    phase: str
    target_price: Decimal | None
    loss_tolerance_percent: Decimal
    extra_tolerance_percent: Decimal
    attempts: int
    consecutive_failures: int
    target_reached_at: datetime | None
    close_enqueued_at: datetime | None
    last_attempt_at: datetime | None = None
    alerted_failures: int = 0
    close_price: Decimal | None = None
    close_reason: str | None = None
    last_error: str | None = None


def view_of(aged: Any, position: Any) -> AgedView:
    """From an ``AgedPosition`` and its ``Position`` (ORM objects or rows)."""
    return AgedView(
        id=aged.id,
        position_id=position.id,
        account=position.account,
        symbol=position.symbol,
        side=position.side,
        size=position.size,
        entry_price=position.entry_price,
        opened_at=position.opened_at,
        status=AgedStatus(aged.status),
        phase=aged.phase,
        target_price=aged.target_price,
        loss_tolerance_percent=aged.loss_tolerance_percent,
        extra_tolerance_percent=aged.extra_tolerance_percent,
        attempts=aged.attempts,
        consecutive_failures=aged.consecutive_failures,
        target_reached_at=aged.target_reached_at,
        close_enqueued_at=aged.close_enqueued_at,
        last_attempt_at=aged.last_attempt_at,
        alerted_failures=aged.alerted_failures,
        close_price=aged.close_price,
        close_reason=aged.close_reason,
        last_error=aged.last_error,
    )


def aged_ids(view: AgedView) -> dict[str, Any]:
    """The ids an episode's events and alerts carry."""
    return {
        "aged_id": view.id,
        "position_id": view.position_id,
        "account": view.account,
        "symbol": view.symbol,
    }


def load_aged(aged_id: int) -> AgedView | None:
    with session_scope() as session:
        aged = session.get(AgedPosition, aged_id)
        if aged is None:
            return None
        return view_of(aged, session.get(Position, aged.position_id))


def lock_aged(session: Session, aged_id: int) -> AgedView:
    """The episode, with its position row and its own row locked, in that order
    (the order a fill's booking takes them in)."""
    position_id = session.scalar(select(AgedPosition.position_id).where(AgedPosition.id == aged_id))
    position = session.execute(
        select(Position.__table__).where(Position.id == position_id).with_for_update()
    ).one()
    aged = session.execute(select(_AGED).where(_AGED.c.id == aged_id).with_for_update()).one()
    return view_of(aged, position)


def write_episode(
    session: Session,
    episode: AgedView,
    *,
    event: str,
    to: AgedStatus | None = None,
    payload: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    order_id: int | None = None,
    client_order_id: str | None = None,
    attempt: int | None = None,
    error_class: str | None = None,
    unset: str | None = None,
    **values: Any,
) -> bool:
    """Change an episode and record ``event``, in the caller's transaction.

    ``to``: the new status (None: fields only, allowed while it is tracked).
    ``unset``: a column that must still be NULL (a first-time fact, such as the
    crossing, that two writers may see at once).
    Raises ``IllegalAgedTransition`` on a move the table does not have.
    Returns False, and writes nothing, when the row is no longer in
    ``episode.status`` or ``unset`` is set (another writer came first).
    """
    current = AgedStatus(episode.status)
    check_transition(current, to)
    guard = [_AGED.c.id == episode.id, _AGED.c.status == current.value]
    if unset is not None:
        guard.append(_AGED.c[unset].is_(None))
    changed = session.execute(
        update(_AGED)
        .where(*guard)
        .values(status=(to or current).value, updated_at=now or datetime.now(UTC), **values)
    ).rowcount
    if changed != 1:
        return False
    record_event(
        session,
        event,
        **aged_ids(episode),
        order_id=order_id,
        client_order_id=client_order_id,
        attempt=attempt,
        error_class=error_class,
        payload=payload,
    )
    return True


def _episode_fills(session: Session, aged_id: int, order: Any) -> list[CloseFill]:
    """Every fill of the episode's orders; ``order`` (the one being booked) as its
    snapshot says, since its row may not carry its latest fill yet."""
    rows = session.execute(
        select(_ORDERS.c.filled, _ORDERS.c.average_price, _ORDERS.c.acked_at).where(
            _ORDERS.c.aged_id == aged_id, _ORDERS.c.filled > 0, _ORDERS.c.id != order.id
        )
    ).all()
    fills = [
        CloseFill(filled, average, acked_at)
        for filled, average, acked_at in rows
        if average is not None
    ]
    if order.filled > 0 and order.average_price is not None:
        fills.append(CloseFill(order.filled, order.average_price, order.acked_at))
    return fills


def record_close(session: Session, episode: AgedView, order: Any, now: datetime) -> bool:
    """End the episode ``closed`` with the record of all its fills (``order`` closed it)."""
    fills = _episode_fills(session, episode.id, order)
    record = close_record(
        episode.side,
        episode.entry_price,
        fills,
        AgedPhase(episode.phase),
        episode.loss_tolerance_percent,
    )
    filled_at = record.filled_at or now
    duration_ms = (
        None
        if episode.target_reached_at is None
        else max(0, int((filled_at - episode.target_reached_at).total_seconds() * 1000))
    )
    attempts = episode.attempts + 1
    written = write_episode(
        session,
        episode,
        to=AgedStatus.CLOSED,
        event="aged_closed",
        now=now,
        order_id=order.id,
        client_order_id=order.client_order_id,
        attempt=attempts,
        payload={
            "reason": record.reason,
            "close_price": str(record.price),
            "amount": str(record.amount),
            "fills": len(fills),
            "pnl": str(record.pnl),
            "pnl_percent": str(record.pnl_percent),
            "duration_ms": duration_ms,
            "phase": episode.phase,
            "by": order.purpose,
        },
        close_order_id=order.id,
        close_price=record.price,
        close_pnl=record.pnl,
        close_pnl_percent=record.pnl_percent,
        close_reason=record.reason,
        close_duration_ms=duration_ms,
        attempts=attempts,
        consecutive_failures=0,
        closed_at=now,
    )
    if written and duration_ms is not None:
        metrics.observe_close_latency(duration_ms / 1000)
    return written


def end_with_position(
    session: Session,
    position_id: int,
    *,
    reason: str,
    externally: bool,
    order: Any,
    now: datetime,
) -> None:
    """End the position's current episode, in the transaction that closes the position.

    ``order``: the order whose fill closed it (None when it closed outside execq).
    """
    position = session.execute(
        select(Position.__table__).where(Position.__table__.c.id == position_id)
    ).one()
    episodes = session.execute(
        select(_AGED)
        .where(_AGED.c.position_id == position_id, _AGED.c.status.in_(status_values(CURRENT)))
        .with_for_update()
    ).all()
    for aged in episodes:
        episode = view_of(aged, position)
        if order is not None and order.aged_id == episode.id:
            record_close(session, episode, order, now)
        elif externally:
            write_episode(
                session,
                episode,
                to=AgedStatus.CLOSED_EXTERNALLY,
                event="aged_closed_externally",
                now=now,
                payload={"reason": reason},
                close_reason=reason,
                closed_at=now,
            )
        else:
            write_episode(
                session,
                episode,
                to=AgedStatus.SUPERSEDED,
                event="aged_superseded",
                now=now,
                order_id=order.id if order is not None else None,
                client_order_id=order.client_order_id if order is not None else None,
                payload={"reason": reason},
                close_reason=reason,
                closed_at=now,
            )
