"""An aged episode's lifecycle as one transition table.

An episode starts ``active`` when the sweep finds a position past its
maximum age, and follows it until the position is gone::

    active ──claim──▶ closing ──close order failed──▶ active
      │                  │
      │                  ├──▶ unclosable   (no order can close it, or the
      │                  │                  policy gave up: a person must act)
      ▼                  ▼
    closed | closed_externally | superseded      (ended, from any current status)

* ``closed``: an order of this episode took the position to zero; the
  close record (price, PnL, reason, duration) is written in that same
  transaction, whichever path booked the fill (the close task, a chunk, the
  recovery sweep after a crash).
* ``closed_externally``: the exchange showed the position flat without
  such an order.
* ``superseded``: another order (a producer's close, a liquidation)
  closed the position.

``unclosable`` keeps its position from being detected again, and ends like
any other when the position closes. Besides status changes, an episode's
phase, target and counters change while it is ``TRACKED`` only: a stale
writer cannot touch an episode that has ended (the store's guarded write).
"""

from __future__ import annotations

from enum import StrEnum


class AgedStatus(StrEnum):
    ACTIVE = "active"
    CLOSING = "closing"
    UNCLOSABLE = "unclosable"
    CLOSED = "closed"
    CLOSED_EXTERNALLY = "closed_externally"
    SUPERSEDED = "superseded"


#: The sweep watches their prices and the close task works on them.
TRACKED = frozenset({AgedStatus.ACTIVE, AgedStatus.CLOSING})
#: The one episode of an open position (a unique partial index holds it to one).
CURRENT = TRACKED | {AgedStatus.UNCLOSABLE}
ENDED = frozenset({AgedStatus.CLOSED, AgedStatus.CLOSED_EXTERNALLY, AgedStatus.SUPERSEDED})

ALLOWED_TRANSITIONS: dict[AgedStatus, frozenset[AgedStatus]] = {
    # active -> unclosable: the sweep's policy gave up (or the book's size is dust).
    AgedStatus.ACTIVE: frozenset({AgedStatus.CLOSING, AgedStatus.UNCLOSABLE}) | ENDED,
    # closing -> active: the close failed (or was not needed yet) and is tried again later.
    AgedStatus.CLOSING: frozenset({AgedStatus.ACTIVE, AgedStatus.UNCLOSABLE}) | ENDED,
    # A person closes it by hand, or a late fill of its own close order closes it.
    AgedStatus.UNCLOSABLE: ENDED,
    AgedStatus.CLOSED: frozenset(),
    AgedStatus.CLOSED_EXTERNALLY: frozenset(),
    AgedStatus.SUPERSEDED: frozenset(),
}


class IllegalAgedTransition(Exception):
    """A write tried to move an episode along an edge the table does not have,
    or to change an episode that is no longer tracked."""

    def __init__(self, current: AgedStatus, target: AgedStatus | None) -> None:
        what = "change of an untracked episode" if target is None else f"-> {target}"
        super().__init__(f"illegal aged transition {current} {what}")
        self.current = current
        self.target = target


def can_transition(current: AgedStatus, target: AgedStatus) -> bool:
    return target in ALLOWED_TRANSITIONS[current]


def check_transition(current: AgedStatus, target: AgedStatus | None) -> None:
    """``target`` None is a change of fields without a status change: tracked episodes only."""
    if target is None:
        if current not in TRACKED:
            raise IllegalAgedTransition(current, None)
        return
    if not can_transition(current, target):
        raise IllegalAgedTransition(current, target)
