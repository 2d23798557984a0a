"""The position book's lifecycle as one transition table.

A position row is ``open`` from its first booked fill until a fill takes it
to zero (``closed``, by one of execq's orders) or the exchange shows it flat
without any such fill (``closed_externally``: someone closed it by hand, or
the exchange liquidated it). A closed row is never reopened: the next fill on
the symbol opens a new row. Every status change goes through
``check_transition``; the store's one guarded write
(``workers.store.positions.close_position``) applies it only to a row still in
the status it read, and appends the event in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class PositionStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    CLOSED_EXTERNALLY = "closed_externally"


#: Positions the book holds now: at most one per account and symbol (one-way mode).
HELD = frozenset({PositionStatus.OPEN})
ENDED = frozenset({PositionStatus.CLOSED, PositionStatus.CLOSED_EXTERNALLY})

ALLOWED_TRANSITIONS: dict[PositionStatus, frozenset[PositionStatus]] = {
    PositionStatus.OPEN: ENDED,
    PositionStatus.CLOSED: frozenset(),
    PositionStatus.CLOSED_EXTERNALLY: frozenset(),
}


class IllegalPositionTransition(Exception):
    """A write tried to move a position along an edge the table does not have."""

    def __init__(self, current: PositionStatus, target: PositionStatus) -> None:
        super().__init__(f"illegal position transition {current} -> {target}")
        self.current = current
        self.target = target


def check_transition(current: PositionStatus, target: PositionStatus) -> None:
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalPositionTransition(current, target)


def status_in_sql(statuses: Iterable[StrEnum], column: str = "status") -> str:
    """``status IN ('a', 'b')`` for a partial index's predicate, built from a named set.

    Sorted, so the text (which a migration repeats) does not depend on set order.
    """
    values = ", ".join(f"'{value}'" for value in status_values(statuses))
    return f"{column} IN ({values})"


def status_values(statuses: Iterable[StrEnum]) -> list[str]:
    """The plain strings of a named set, sorted, for a query's ``IN``."""
    return sorted(status.value for status in statuses)
