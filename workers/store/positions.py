"""The position book: fills become positions, exactly once.

``book_order_fill`` books ``filled - booked_filled`` of an order into the open
position of its account and symbol, in one transaction with both rows locked,
so a redelivered verification (or the recovery sweep repeating it) books
nothing twice.

A position's status changes only in ``close_position``: the move is checked
against ``workers.execution.position_state``, applied to a row still open,
and recorded with its event, and the position's aged episode ends in the same
transaction (``workers.store.aged.end_with_position``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from workers.execution.position_state import PositionStatus, check_transition
from workers.execution.positions import PositionState, apply_fill, side_of
from workers.store import orders as order_store
from workers.store.aged import end_with_position
from workers.store.db import DriverStatement, session_scope
from workers.store.events import record_event
from workers.store.models import Position
from workers.store.orders import OrderSnapshot
from workers.store.slots import lock_slot


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


class StalePosition(Exception):
    """A writer tried to close a position that is no longer open (it read a stale row)."""


# The booking runs on every fill, inside the order's settling transaction: it
# uses prebuilt Core statements on rows (as workers/store/orders.py does), not
# ORM objects, whose unit of work cost more than the statements themselves.
# The recovery sweep opens and closes positions through the same helpers.
_POSITIONS = Position.__table__
_SELECT_OPEN = DriverStatement(
    select(_POSITIONS)
    .where(
        _POSITIONS.c.account == bindparam("account"),
        _POSITIONS.c.symbol == bindparam("symbol"),
        _POSITIONS.c.status == PositionStatus.OPEN.value,
    )
    .with_for_update()
)
_INSERT_POSITION = insert(_POSITIONS).returning(_POSITIONS.c.id)
# The SET clause is the keys of the parameters given, plus the version counter the
# ORM checks (``version_id_col``), so an ORM writer holding an older copy fails.
_UPDATE_POSITION = DriverStatement(
    update(_POSITIONS)
    .where(_POSITIONS.c.id == bindparam("position_id"))
    .values(version=_POSITIONS.c.version + 1)
)
# The guarded status change: only a row still in the status its writer read moves.
_CHANGE_POSITION_STATUS = DriverStatement(
    update(_POSITIONS)
    .where(
        _POSITIONS.c.id == bindparam("position_id"),
        _POSITIONS.c.status == bindparam("current_status"),
    )
    .values(version=_POSITIONS.c.version + 1)
)


def lock_open_position(session: Session, account: str, symbol: str) -> Any:
    """The open position as a row, locked; with none open, the slot is locked instead.

    The position is read after the slot's lock is held (its own statement, or
    an earlier one of the transaction): a read in the statement that takes the
    lock would not see a position another writer opened meanwhile.
    """
    lock_slot(session, account, symbol)
    return _SELECT_OPEN.one_or_none(session.connection(), {"account": account, "symbol": symbol})


def state_of(position: Any) -> PositionState:
    """The signed book state of a position (an ORM object or a row), or of none."""
    if position is None:
        return PositionState(size=Decimal(0), entry_price=Decimal(0), realized_pnl=Decimal(0))
    signed = position.size if position.side == "long" else -position.size
    return PositionState(size=signed, entry_price=position.entry_price, realized_pnl=Decimal(0))


def _ids(
    position_id: int, account: str, symbol: str, order: OrderSnapshot | None = None
) -> dict[str, Any]:
    return {
        "position_id": position_id,
        "account": account,
        "symbol": symbol,
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
) -> int:
    """Insert an open position (``size`` signed); returns its id. The caller records the event."""
    return (
        session.connection()
        .execute(
            _INSERT_POSITION,
            {
                "account": account,
                "symbol": symbol,
                "side": side_of(size),
                "size": abs(size),
                "entry_price": entry_price,
                "status": PositionStatus.OPEN.value,
                "verification": verification,
                "opened_at": opened_at,
                "opening_order_id": opening_order.id if opening_order else None,
                "realized_pnl": Decimal(0),
            },
        )
        .scalar_one()
    )


def correct_position(
    session: Session,
    position_id: int,
    *,
    size: Decimal,
    entry_price: Decimal | None,
    now: datetime,
    verification: str | None = None,
) -> None:
    """Set an open position's size (signed, not 0) and side to the exchange's, and its
    entry when ``entry_price`` is given. The caller records the event."""
    values: dict[str, Any] = {
        "position_id": position_id,
        "size": abs(size),
        "side": side_of(size),
        "updated_at": now,
    }
    if entry_price is not None:
        values["entry_price"] = entry_price
    if verification is not None:
        values["verification"] = verification
    _UPDATE_POSITION.execute(session.connection(), values)


def close_position(
    session: Session,
    position_id: int,
    account: str,
    symbol: str,
    *,
    reason: str,
    realized_pnl: Decimal,
    now: datetime,
    order: OrderSnapshot | None,
) -> None:
    """Close an open position, end its aged episode and record the close.

    ``reason`` ``closed_externally`` when the exchange showed it flat without a
    fill of ours (``order`` None); else the closing order's purpose. Raises
    ``StalePosition`` when the row is no longer open.
    """
    externally = reason == "closed_externally"
    target = PositionStatus.CLOSED_EXTERNALLY if externally else PositionStatus.CLOSED
    check_transition(PositionStatus.OPEN, target)
    changed = _CHANGE_POSITION_STATUS.execute(
        session.connection(),
        {
            "position_id": position_id,
            "current_status": PositionStatus.OPEN.value,
            "status": target.value,
            "closed_at": now,
            "close_reason": reason,
            "updated_at": now,
            "realized_pnl": realized_pnl,
        },
    ).rowcount
    if changed != 1:
        raise StalePosition(f"position {position_id} is no longer open")
    record_event(
        session,
        "closed_externally" if externally else "position_closed",
        **_ids(position_id, account, symbol, order),
        payload={"reason": reason, "realized_pnl": str(realized_pnl)},
    )
    end_with_position(
        session, position_id, reason=reason, externally=externally, order=order, now=now
    )


def close_externally(session: Session, position: Any, now: datetime) -> None:
    """Close ``position`` (a locked open row) as closed by someone else: the exchange
    shows it flat and no fill of ours explains it."""
    close_position(
        session,
        position.id,
        position.account,
        position.symbol,
        reason="closed_externally",
        realized_pnl=position.realized_pnl,
        now=now,
        order=None,
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
    position = lock_open_position(session, order.account, order.symbol)
    before = state_of(position)
    after = apply_fill(before, order.side, delta, price)
    realized = after.realized_pnl - before.realized_pnl
    position_id: int | None = None
    closed_id: int | None = None

    crosses_zero = position is not None and (
        after.size == 0 or (after.size > 0) != (before.size > 0)
    )
    if position is not None and crosses_zero:
        closed_id = position.id
        close_position(
            session,
            position.id,
            order.account,
            order.symbol,
            reason=order.purpose,
            realized_pnl=position.realized_pnl + realized,
            now=now,
            order=order,
        )
        position = None
    if after.size != 0 and position is None:
        position_id = open_new_position(
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
            **_ids(position_id, order.account, order.symbol, order),
            payload={"size": str(after.size), "entry_price": str(after.entry_price)},
        )
    elif after.size != 0 and position is not None:
        position_id = position.id
        grew = abs(after.size) > abs(before.size)
        values: dict[str, Any] = {
            "position_id": position.id,
            "size": abs(after.size),
            "entry_price": after.entry_price,
            "updated_at": now,
        }
        if realized:
            values["realized_pnl"] = position.realized_pnl + realized
        _UPDATE_POSITION.execute(session.connection(), values)
        record_event(
            session,
            "position_increased" if grew else "position_reduced",
            **_ids(position.id, order.account, order.symbol, order),
            payload={
                "size": str(after.size),
                "entry_price": str(after.entry_price),
                "realized_pnl": str(realized),
            },
        )
    return Booking(
        order_id=order.id,
        position_id=position_id if position_id is not None else closed_id,
        delta=delta,
        size_after=after.size,
        closed_position_id=closed_id,
        realized_pnl=realized,
        booked_filled=order.filled,
        booked_at=now,
    )
