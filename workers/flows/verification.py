"""Position verification and the flat-after-close check (seeds 003, 004).

Sources, in order: (1) the order itself — what the create response or a
fetch recorded, else a lookup with lag retries; a closed order with zero
filled is a definite "no"; (2) the Redis position cache (a miss is not a
"no"); (3) REST positions with backoff, until the budget is spent. The
verdict comes from ``workers.execution.verification.decide``; every source
asked is an event. ``unknown`` never rolls anything back: it raises an alert
and leaves the order to the recovery sweep.

With a healthy orders stream (``workers.streams.health``) an acknowledged
order that does not decide yet first waits up to ``streams.fill_wait_s`` for
the stream to record its fill; only when it records nothing decisive is the
order looked up by REST (a stream may lose a message; an order whose create is
in doubt is looked up at once: the stream cannot speak for an order the
exchange may not have). With a healthy positions stream each positions round
asks the position cache (which the stream writes) first, and REST only when
the cache does not decide. A stale stream: as without streams.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from workers.exchange import gateway
from workers.exchange.errors import VenueError
from workers.exchange.positions import cached_position_size, fetch_positions
from workers.exchange.prices import amount_limits
from workers.exchange.venues.base import ExchangeOrder
from workers.execution.lifecycle import status_from_exchange
from workers.execution.order_state import IN_DOUBT, RESTING, OrderStatus
from workers.execution.retry import lookup_delays
from workers.execution.verification import (
    FlatCheck,
    OrderObservation,
    SourceName,
    SourceOutcome,
    Verdict,
    VerificationResult,
    decide,
    flat_outcome,
    order_verdict,
    position_outcome,
)
from workers.flows.submission import record_sighting
from workers.observability import metrics
from workers.retrying import poll
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.db import session_scope
from workers.store.events import raise_alert, record_event
from workers.store.models import Position
from workers.store.orders import OrderSnapshot
from workers.store.positions import Booking, book_fill
from workers.streams.health import ORDERS, POSITIONS, stream_healthy

logger = logging.getLogger("execq.verifier")

# Seed 003: a fresh order may be invisible; 0.5 s x 1.5^n, 5 tries.
ORDER_LOOKUP_TRIES = 5
ORDER_LOOKUP_BASE_S = 0.5
ORDER_LOOKUP_FACTOR = 1.5
# The stored order is read again after 25 ms x 2^n (at most 0.2 s) while the orders
# stream may still record its fill.
STREAM_WAIT_BASE_S = 0.025
STREAM_WAIT_CAP_S = 0.2
# REST positions are asked again after 0.5 s x 1.5^n while the budget lasts.
POSITIONS_BASE_S = 0.5
POSITIONS_FACTOR = 1.5


def _observation(order: OrderSnapshot) -> OrderObservation | None:
    """What the stored order already says, when the exchange told us its fill."""
    if order.status in IN_DOUBT or order.acked_at is None:
        return None
    if order.status in RESTING and order.filled == 0:
        return OrderObservation(status="open", amount=order.amount, filled=order.filled)
    unified = {
        OrderStatus.FILLED: "closed",
        OrderStatus.PARTIALLY_FILLED: "open",
        OrderStatus.CANCELED: "canceled",
        OrderStatus.EXPIRED: "expired",
        OrderStatus.REJECTED: "rejected",
        OrderStatus.OPEN: "open",
    }[order.status]
    return OrderObservation(status=unified, amount=order.amount, filled=order.filled)


def _refresh_order(order: OrderSnapshot, deadline: float, settings: Settings) -> OrderSnapshot:
    """Ask the exchange about the order with lag retries, and record what it said."""
    venue = gateway.venue(order.account)
    delays = lookup_delays(ORDER_LOOKUP_TRIES - 1, ORDER_LOOKUP_BASE_S, ORDER_LOOKUP_FACTOR)
    probes = 0

    def probe() -> ExchangeOrder | None:
        nonlocal probes
        probes += 1
        try:
            seen = venue.fetch_order(
                order.symbol,
                exchange_order_id=order.exchange_order_id,
                client_order_id=order.client_order_id,
            )
        except VenueError as exc:
            logger.info("verify %s: lookup failed: %s", order.client_order_id, exc.describe())
            return None
        if seen is None or status_from_exchange(seen, order.amount) is None:
            return None
        return seen

    seen = poll(
        probe,
        delays_s=lambda attempt: delays[attempt - 1],
        until=lambda: probes >= ORDER_LOOKUP_TRIES,
        deadline=deadline,
        requeue_past_deadline=False,
    )
    if seen is None:
        return order
    return record_sighting(order, seen, "verification", settings)


def _await_stream(order: OrderSnapshot, deadline: float, settings: Settings) -> OrderSnapshot:
    """The order once the orders stream recorded a decisive state of it, or as last stored
    when ``streams.fill_wait_s`` passes first."""
    until = min(deadline, time.monotonic() + settings.streams.fill_wait_s)
    latest = order

    def decisive() -> OrderSnapshot | None:
        nonlocal latest
        latest = order_store.load_order(order.client_order_id) or latest
        return latest if decisive_order(latest) else None

    poll(
        decisive,
        delays_s=lambda attempt: min(STREAM_WAIT_BASE_S * 2 ** (attempt - 1), STREAM_WAIT_CAP_S),
        until=lambda: False,
        deadline=until,
        requeue_past_deadline=False,
    )
    return latest


@dataclass(frozen=True)
class Verification:
    """A verdict and the answers it came from (each becomes a ``verification_source`` event)."""

    result: VerificationResult
    asked: tuple[tuple[SourceName, SourceOutcome], ...]


def decisive_order(order: OrderSnapshot) -> bool:
    """Whether the stored order alone decides the verdict, with no exchange call.

    True when the create response (Binance) or the follow-up fetch (Bybit)
    already recorded a terminal state with its fill.
    """
    observation = _observation(order)
    if observation is None:
        return False
    return order_verdict(observation).kind in ("filled", "partially_filled", "not_filled")


def _decided(result: VerificationResult) -> bool:
    return result.verdict in (Verdict.VERIFIED, Verdict.FAILED)


def verify_order(order: OrderSnapshot, settings: Settings) -> Verification:
    """The verdict on the position this order should have produced."""
    deadline = time.monotonic() + settings.verify_budget_s
    asked: list[tuple[SourceName, SourceOutcome]] = []

    def judge(exhausted: bool = False) -> VerificationResult:
        return decide(order.amount, asked, budget_exhausted=exhausted, tolerance=Decimal(0))

    observation = _observation(order)
    if observation is None or observation.status == "open":
        if observation is not None and stream_healthy(order.account, ORDERS, settings):
            order = _await_stream(order, deadline, settings)
        if not decisive_order(order):
            order = _refresh_order(order, deadline, settings)
        observation = _observation(order)
    asked.append(
        (
            SourceName.ORDER,
            order_verdict(
                observation or OrderObservation(status=None, amount=order.amount, filled=None)
            ),
        )
    )
    if _decided(result := judge()):
        return Verification(result, tuple(asked))

    cached = cached_position_size(order.account, order.symbol)
    asked.append((SourceName.CACHE, position_outcome(None if cached is None else abs(cached))))
    if _decided(result := judge()):
        return Verification(result, tuple(asked))

    def positions_say() -> VerificationResult | None:
        if stream_healthy(order.account, POSITIONS, settings):
            cached = cached_position_size(order.account, order.symbol)
            if cached is not None:
                asked.append((SourceName.CACHE, position_outcome(abs(cached))))
                if _decided(result := judge()):
                    return result
        try:
            positions = fetch_positions(order.account, [order.symbol])
        except VenueError as exc:
            logger.info("verify %s: positions failed: %s", order.client_order_id, exc.describe())
            return None
        size = sum((abs(p.size) for p in positions if p.symbol == order.symbol), Decimal(0))
        asked.append((SourceName.REST, position_outcome(size)))
        result = judge()
        return result if _decided(result) else None

    decided = poll(
        positions_say,
        delays_s=lambda attempt: POSITIONS_BASE_S * POSITIONS_FACTOR ** (attempt - 1),
        until=lambda: False,
        deadline=deadline,
        requeue_past_deadline=False,
    )
    if decided is not None:
        return Verification(decided, tuple(asked))
    return Verification(judge(exhausted=True), tuple(asked))


def verify_and_book(
    client_order_id: str, settings: Settings, *, order: OrderSnapshot | None = None
) -> tuple[Verification, Booking | None]:
    """Verify the order's position, then record the sources, the verdict and the booking
    in one transaction (a verified fill is booked exactly once).

    ``order`` is the caller's fresh snapshot of it, when it has one.
    """
    if order is None:
        order = order_store.load_order(client_order_id)
    if order is None:
        raise LookupError(f"no order with client order id {client_order_id}")
    verification = verify_order(order, settings)
    with session_scope() as session:
        locked = order_store.lock_order(session, client_order_id)
        values, booking = _settle(session, locked, verification)
        order_store.write_order(session, locked.id, values)
    return verification, booking


def _settle(
    session: Session, order: OrderSnapshot, verification: Verification
) -> tuple[dict[str, Any], Booking | None]:
    """Record the verdict and its sources, and book a verified fill, in the caller's
    transaction (the order row locked); returns the order row's changes and the booking."""
    _record_verification(session, order, verification)
    values: dict[str, Any] = {"verification": str(verification.result.verdict)}
    booking = None
    if verification.result.verdict == Verdict.VERIFIED:
        booking = book_fill(session, order)
        values |= booking.order_values
    metrics.observe_verdict(order.account, str(verification.result.verdict))
    return values, booking


class InlineSettlement:
    """Verdict and booking written in the very transaction that makes the order terminal.

    Pass as ``Submission(on_terminal=...)``. Only when the order alone decides
    (what the exchange told us of its fill, no call needed): anything else is
    left for ``verify_and_book``. ``booking`` is what was booked, if anything.
    """

    def __init__(self) -> None:
        self.settled = False
        self.booking: Booking | None = None

    def __call__(self, session: Session, order: OrderSnapshot) -> dict[str, Any]:
        verification = _order_only_verification(order)
        if verification is None:
            return {}
        values, self.booking = _settle(session, order, verification)
        self.settled = True
        return values


def _order_only_verification(order: OrderSnapshot) -> Verification | None:
    """The verdict from the stored order alone, when it decides one."""
    if order.status == OrderStatus.REJECTED or not decisive_order(order):
        return None
    observation = _observation(order)
    assert observation is not None
    asked = ((SourceName.ORDER, order_verdict(observation)),)
    result = decide(order.amount, list(asked), budget_exhausted=False, tolerance=Decimal(0))
    return Verification(result, asked) if _decided(result) else None


def _record_verification(
    session: Session, order: OrderSnapshot, verification: Verification
) -> None:
    result = verification.result
    ids = {
        "order_id": order.id,
        "client_order_id": order.client_order_id,
        "signal_id": order.signal_id,
        "account": order.account,
        "symbol": order.symbol,
        "position_id": order.position_id,
    }
    for source, outcome in verification.asked:
        record_event(
            session,
            "verification_source",
            **ids,
            payload={"source": str(source), "kind": outcome.kind, "filled": str(outcome.filled)},
        )
    record_event(
        session,
        f"verification_{result.verdict}",
        **ids,
        payload={
            "actual_size": None if result.actual_size is None else str(result.actual_size),
            "expected_size": str(order.amount),
            "mismatch": result.mismatch,
            "decided_by": None if result.decided_by is None else str(result.decided_by),
        },
    )
    if result.verdict == Verdict.UNKNOWN:
        if order.position_id is not None:
            position = session.get(Position, order.position_id)
            if position is not None:
                position.verification = "unknown"
        raise_alert(
            session,
            "verification_unknown",
            f"could not verify {order.account} {order.symbol} order {order.client_order_id} "
            "within the budget; left for the recovery sweep",
            severity="warning",
            account=order.account,
            symbol=order.symbol,
            order_id=order.id,
        )


@dataclass(frozen=True)
class FlatReport:
    flat: bool
    residual: Decimal
    checks: int


def check_flat(
    account: str,
    symbol: str,
    settings: Settings,
    *,
    position_id: int | None = None,
    context: str = "close",
) -> FlatReport:
    """After a close: is the position really gone? Up to N REST checks over the budget.

    A residual raises a critical alert naming the possible orphan.
    """
    if order_store.unsettled_orders(account, symbol):
        # Other fills on this symbol are not booked yet: the exchange cannot be
        # expected flat. The recovery sweep reconciles the symbol once it settles.
        with session_scope() as session:
            record_event(
                session,
                "flat_check_deferred",
                position_id=position_id,
                account=account,
                symbol=symbol,
                payload={"context": context, "reason": "orders on the symbol still unsettled"},
            )
        return FlatReport(flat=True, residual=Decimal(0), checks=0)
    min_amount = amount_limits(account, symbol).minimum
    attempts = settings.flat_check_attempts
    interval_s = settings.flat_check_budget_s / attempts
    residuals: list[Decimal] = []
    checks = 0

    def flat_now() -> FlatCheck | None:
        nonlocal checks
        checks += 1
        try:
            positions = fetch_positions(account, [symbol])
        except VenueError as exc:
            logger.info("flat check %s %s: %s", account, symbol, exc.describe())
            return None
        residuals.append(sum((abs(p.size) for p in positions if p.symbol == symbol), Decimal(0)))
        outcome = flat_outcome(residuals[-1:], min_amount)
        return outcome if outcome.flat else None

    flat = poll(
        flat_now,
        delays_s=lambda attempt: interval_s,
        until=lambda: checks >= attempts,
        # One more interval than the checks need: the budget bounds the checks, not a clock.
        deadline=time.monotonic() + settings.flat_check_budget_s + interval_s,
        requeue_past_deadline=False,
    )
    if flat is not None:
        check = flat
    elif residuals:
        check = flat_outcome(residuals[-1:], min_amount)
    else:
        check = FlatCheck(flat=False, residual=Decimal(0))
    with session_scope() as session:
        if check.flat:
            record_event(
                session,
                "position_flat",
                position_id=position_id,
                account=account,
                symbol=symbol,
                payload={"checks": len(residuals), "context": context},
            )
        else:
            record_event(
                session,
                "position_residual",
                position_id=position_id,
                account=account,
                symbol=symbol,
                payload={"residual": str(check.residual), "checks": len(residuals)},
            )
            raise_alert(
                session,
                "possible_orphaned_position",
                f"possible orphaned position: {account} {symbol} still shows "
                f"{check.residual} after {context}",
                account=account,
                symbol=symbol,
                position_id=position_id,
                payload={"residual": str(check.residual), "context": context},
            )
    return FlatReport(flat=check.flat, residual=check.residual, checks=len(residuals))
