"""The order lifecycle as one transition table.

``intent`` is written before any exchange call; ``submitting`` is set right
before the create request leaves; ``unknown`` means the create's outcome is
ambiguous and not yet resolved by a lookup. Every status change goes through
``check_transition`` so an illegal move fails loudly instead of corrupting the
record (a stale worker must not move a filled order back to open).
"""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    INTENT = "intent"
    SUBMITTING = "submitting"
    UNKNOWN = "unknown"
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"


TERMINAL = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)
# The create call may have reached the exchange: never resubmit blindly.
IN_DOUBT = frozenset({OrderStatus.SUBMITTING, OrderStatus.UNKNOWN})
# Accepted by the exchange and still working.
RESTING = frozenset({OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED})
IN_FLIGHT = frozenset({OrderStatus.INTENT}) | IN_DOUBT | RESTING

_ACCEPTED_OUTCOMES = frozenset(
    {
        OrderStatus.OPEN,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.EXPIRED,
    }
)

ALLOWED_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    # intent -> rejected: refused before sending (kill switch, validation);
    # intent -> canceled: canceled by a person before anything was sent.
    OrderStatus.INTENT: frozenset(
        {OrderStatus.SUBMITTING, OrderStatus.REJECTED, OrderStatus.CANCELED}
    ),
    # submitting -> intent: the run gave up for now and no create of it left (every try
    # failed before execution), so a later run may send it without looking it up first.
    OrderStatus.SUBMITTING: _ACCEPTED_OUTCOMES
    | {OrderStatus.UNKNOWN, OrderStatus.REJECTED, OrderStatus.INTENT},
    # unknown -> submitting: the lookup proved the order absent, so it may be sent again.
    OrderStatus.UNKNOWN: _ACCEPTED_OUTCOMES | {OrderStatus.REJECTED, OrderStatus.SUBMITTING},
    OrderStatus.OPEN: frozenset(
        {
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELED,
            OrderStatus.EXPIRED,
        }
    ),
    OrderStatus.PARTIALLY_FILLED: frozenset(
        {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.EXPIRED}
    ),
    OrderStatus.FILLED: frozenset(),
    OrderStatus.CANCELED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
}

#: The event of a move back to ``intent`` (nothing was sent); ``intent`` itself has none.
NOT_SENT_EVENT = "order_not_sent"

EVENT_FOR_STATUS: dict[OrderStatus, str] = {
    OrderStatus.SUBMITTING: "order_submitting",
    OrderStatus.UNKNOWN: "order_unknown",
    OrderStatus.OPEN: "order_submitted",
    OrderStatus.PARTIALLY_FILLED: "order_partially_filled",
    OrderStatus.FILLED: "order_filled",
    OrderStatus.CANCELED: "order_canceled",
    OrderStatus.REJECTED: "order_rejected",
    OrderStatus.EXPIRED: "order_expired",
}


class IllegalTransition(Exception):
    """A write tried to move an order along an edge the table does not have."""

    def __init__(self, current: OrderStatus, target: OrderStatus) -> None:
        super().__init__(f"illegal order transition {current} -> {target}")
        self.current = current
        self.target = target


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return target in ALLOWED_TRANSITIONS[current]


def check_transition(current: OrderStatus, target: OrderStatus) -> None:
    if not can_transition(current, target):
        raise IllegalTransition(current, target)


def path_to(current: OrderStatus, target: OrderStatus) -> list[OrderStatus]:
    """The legal steps from ``current`` to ``target`` (adopting an exchange state).

    A lookup may reveal a state several edges ahead (an ``unknown`` order that
    is already ``filled``); direct edges exist for those, and the one indirect
    case, ``intent`` -> anything accepted, goes through ``submitting``.
    """
    if current == target:
        return []
    if can_transition(current, target):
        return [target]
    if current == OrderStatus.INTENT and can_transition(OrderStatus.SUBMITTING, target):
        return [OrderStatus.SUBMITTING, target]
    raise IllegalTransition(current, target)
