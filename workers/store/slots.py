"""The lock on one (account, symbol) slot of the position book.

Row locks cannot guard a row that does not exist yet: two fills opening the
same symbol would both insert. A transaction-scoped advisory lock on the pair
serialises every writer of the slot until commit. Lock order: an order's row
first, then its slot, never the other way round.

A transaction takes a slot's lock once: with the order row it books
(``slot_lock`` in the same statement, then ``note_slot_locked``) or on its own
(``lock_slot``), which is then a no-op.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, bindparam, event, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

_LOCKED_SLOTS = "locked_slots"


def slot_lock(account: Any, symbol: Any) -> ColumnElement[Any]:
    """SQL taking the slot's lock, for column or parameter expressions of the pair."""
    return func.pg_advisory_xact_lock(func.hashtextextended(account + "|" + symbol, 0))


_LOCK_SLOT = select(
    slot_lock(bindparam("account", type_=String), bindparam("symbol", type_=String))
)


def lock_slot(session: Session, account: str, symbol: str) -> None:
    """Hold the slot's lock until the session's transaction ends."""
    locked = session.info.setdefault(_LOCKED_SLOTS, set())
    if (account, symbol) in locked:
        return
    session.connection().execute(_LOCK_SLOT, {"account": account, "symbol": symbol})
    locked.add((account, symbol))


def note_slot_locked(session: Session, account: str, symbol: str) -> None:
    """Record that a statement of this transaction took the slot's lock (``slot_lock``)."""
    session.info.setdefault(_LOCKED_SLOTS, set()).add((account, symbol))


@event.listens_for(Session, "after_transaction_end")
def _forget_locked_slots(session: Session, transaction: Any) -> None:
    # The locks end with the transaction; a later one on the same session takes them anew.
    session.info.pop(_LOCKED_SLOTS, None)
