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
    # intent -> rejected: refused before sending (kill switch, validation).
    OrderStatus.INTENT: frozenset({OrderStatus.SUBMITTING, OrderStatus.REJECTED}),
    OrderStatus.SUBMITTING: _ACCEPTED_OUTCOMES | {OrderStatus.UNKNOWN, OrderStatus.REJECTED},
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


def status_from_exchange(
    unified_status: str | None, amount: object, filled: object
) -> OrderStatus | None:
    """Our status for a ccxt unified order, or None when the exchange did not say.

    ``closed`` with less than the amount filled is Bybit's PartiallyFilledCanceled
    (and Binance's IOC remainder): a terminal order that did fill in part, so
    it is ``canceled`` with its real ``filled`` kept, never a failure.
    """
    from decimal import Decimal

    amount_d = Decimal(str(amount)) if amount is not None else None
    filled_d = Decimal(str(filled)) if filled is not None else Decimal(0)
    if unified_status is None:
        return None
    if unified_status == "open":
        return OrderStatus.PARTIALLY_FILLED if filled_d > 0 else OrderStatus.OPEN
    if unified_status == "closed":
        if amount_d is not None and filled_d >= amount_d:
            return OrderStatus.FILLED
        return OrderStatus.CANCELED
    if unified_status == "canceled":
        return OrderStatus.CANCELED
    if unified_status == "expired":
        return OrderStatus.EXPIRED
    if unified_status == "rejected":
        return OrderStatus.REJECTED
    return None


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
