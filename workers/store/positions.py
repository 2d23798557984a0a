"""The position book: fills become positions, exactly once.

``book_order_fill`` books ``filled - booked_filled`` of an order into the open
position of its account and symbol, in one transaction with both rows locked,
so a redelivered verification (or the recovery sweep repeating it) books
nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from workers.execution.positions import PositionState, apply_fill, side_of
from workers.store import orders as order_store
from workers.store.db import session_scope
from workers.store.events import record_event
from workers.store.models import AgedPosition, Position
from workers.store.orders import OrderSnapshot


@dataclass(frozen=True)
class Booking:
    """What booking one order's new fill did to the book."""

    order_id: int
    position_id: int | None
    delta: Decimal
    size_after: Decimal  # signed; 0 when the fill closed the position
    closed_position_id: int | None = None
    realized_pnl: Decimal = Decimal(0)
    booked_filled: Decimal = Decimal(0)
    booked_at: datetime | None = None

    @property
    def booked(self) -> bool:
        return self.delta != 0

    @property
    def order_values(self) -> dict[str, Any]:
        """What booking changes on the order row (nothing when nothing was booked)."""
        if not self.booked:
            return {}
        return {
            "booked_filled": self.booked_filled,
            "position_id": self.position_id,
            "updated_at": self.booked_at,
        }


class MissingFillPrice(Exception):
    """A fill without a price cannot be booked; verification must fetch it first."""


def open_position_for_update(session: Session, account: str, symbol: str) -> Position | None:
    """The open position, locked; with none open, the (account, symbol) slot is locked instead.

    Row locks cannot guard a row that does not exist yet: two fills opening the
    same symbol would both insert. A transaction-scoped advisory lock on the
    pair serialises every writer of that book slot until commit.
    """
    session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(f"{account}|{symbol}", 0)))
    )
    return session.scalars(
        select(Position)
        .where(Position.account == account, Position.symbol == symbol, Position.status == "open")
        .with_for_update()
    ).one_or_none()


def state_of(position: Position | None) -> PositionState:
    if position is None:
        return PositionState(size=Decimal(0), entry_price=Decimal(0), realized_pnl=Decimal(0))
    signed = position.size if position.side == "long" else -position.size
    return PositionState(size=signed, entry_price=position.entry_price, realized_pnl=Decimal(0))


def _ids(position: Position, order: OrderSnapshot | None = None) -> dict:
    return {
        "position_id": position.id,
        "account": position.account,
        "symbol": position.symbol,
        "order_id": order.id if order else None,
        "client_order_id": order.client_order_id if order else None,
        "signal_id": order.signal_id if order else None,
    }


def open_new_position(
    session: Session,
    *,
    account: str,
    symbol: str,
    size: Decimal,
    entry_price: Decimal,
    opened_at: datetime,
    opening_order: OrderSnapshot | None,
    verification: str,
) -> Position:
    position = Position(
        account=account,
        symbol=symbol,
        side=side_of(size),
        size=abs(size),
        entry_price=entry_price,
        status="open",
        verification=verification,
        opened_at=opened_at,
        opening_order_id=opening_order.id if opening_order else None,
        realized_pnl=Decimal(0),
    )
    session.add(position)
    session.flush()
    return position


def close_position(
    session: Session,
    position: Position,
    *,
    reason: str,
    now: datetime,
    order: OrderSnapshot | None,
) -> None:
    position.status = "closed" if reason != "closed_externally" else "closed_externally"
    position.closed_at = now
    position.close_reason = reason
    position.updated_at = now
    # An aged episode ends with its position, whoever closed it; when the aged
    # close flow was the closer it records its own outcome over this.
    for aged in session.scalars(
        select(AgedPosition).where(
            AgedPosition.position_id == position.id,
            AgedPosition.status.in_(("active", "closing")),
        )
    ):
        aged.status = "closed_externally" if reason == "closed_externally" else "superseded"
        aged.close_reason = aged.close_reason or reason
        aged.closed_at = now
        aged.updated_at = now
    record_event(
        session,
        "position_closed" if reason != "closed_externally" else "closed_externally",
        **_ids(position, order),
        payload={"reason": reason, "realized_pnl": str(position.realized_pnl)},
    )


def book_order_fill(client_order_id: str) -> Booking:
    """Book the part of the order's fill not yet in the book, in its own transaction."""
    with session_scope() as session:
        order = order_store.lock_order(session, client_order_id)
        booking = book_fill(session, order)
        order_store.write_order(session, order.id, booking.order_values)
        return booking


def book_fill(session: Session, order: OrderSnapshot, verification: str = "verified") -> Booking:
    """Book ``filled - booked_filled`` of a locked order into its position. Idempotent.

    Changes the position book; the order row's side of it (``booked_filled``,
    ``position_id``) is ``Booking.order_values``, for the caller to write with
    whatever else it changes on the row.
    """
    now = datetime.now(UTC)
    delta = order.filled - order.booked_filled
    if delta <= 0:
        return Booking(order.id, order.position_id, Decimal(0), Decimal(0))
    price = order.average_price or order.price
    if price is None:
        raise MissingFillPrice(order.client_order_id)
    position = open_position_for_update(session, order.account, order.symbol)
    before = state_of(position)
    after = apply_fill(before, order.side, delta, price)
    realized = after.realized_pnl - before.realized_pnl
    closed_id: int | None = None

    if position is not None and realized:
        position.realized_pnl += realized
    crosses_zero = position is not None and (
        after.size == 0 or (after.size > 0) != (before.size > 0)
    )
    if crosses_zero:
        assert position is not None
        closed_id = position.id
        close_position(session, position, reason=order.purpose, now=now, order=order)
        position = None
    if after.size != 0:
        if position is None:
            position = open_new_position(
                session,
                account=order.account,
                symbol=order.symbol,
                size=after.size,
                entry_price=after.entry_price,
                opened_at=now,
                opening_order=order,
                verification=verification,
            )
            record_event(
                session,
                "position_opened",
                **_ids(position, order),
                payload={"size": str(after.size), "entry_price": str(after.entry_price)},
            )
        else:
            grew = abs(after.size) > abs(before.size)
            position.size = abs(after.size)
            position.entry_price = after.entry_price
            position.updated_at = now
            record_event(
                session,
                "position_increased" if grew else "position_reduced",
                **_ids(position, order),
                payload={
                    "size": str(after.size),
                    "entry_price": str(after.entry_price),
                    "realized_pnl": str(realized),
                },
            )
    return Booking(
        order_id=order.id,
        position_id=position.id if position is not None else closed_id,
        delta=delta,
        size_after=after.size,
        closed_position_id=closed_id,
        realized_pnl=realized,
        booked_filled=order.filled,
        booked_at=now,
    )
