"""Position verification and the flat-after-close check (seeds 003, 004).

Sources, in order: (1) the order itself — what the create response or a
fetch recorded, else a lookup with lag retries; a closed order with zero
filled is a definite "no"; (2) the Redis position cache (a miss is not a
"no"); (3) REST positions with backoff, until the budget is spent. The
verdict comes from ``workers.execution.verification.decide``; every source
asked is an event. ``unknown`` never rolls anything back: it raises an alert
and leaves the order to the recovery sweep.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from workers.exchange import gateway
from workers.exchange import orders as exchange_orders
from workers.exchange.positions import cached_position_size, fetch_positions
from workers.exchange.prices import amount_limits
from workers.exchange.reads import EXCHANGE_ERRORS
from workers.execution.order_state import IN_DOUBT, RESTING, OrderStatus, status_from_exchange
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
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.db import session_scope
from workers.store.events import raise_alert, record_event
from workers.store.orders import OrderSnapshot
from workers.submission import describe_error

logger = logging.getLogger("execq.verifier")

# Seed 003: a fresh order may be invisible; 0.5 s x 1.5^n, 5 tries.
ORDER_LOOKUP_TRIES = 5
ORDER_LOOKUP_BASE_S = 0.5
ORDER_LOOKUP_FACTOR = 1.5


def _record_source(order: OrderSnapshot, source: SourceName, outcome: SourceOutcome) -> None:
    with session_scope() as session:
        record_event(
            session,
            "verification_source",
            order_id=order.id,
            position_id=order.position_id,
            client_order_id=order.client_order_id,
            signal_id=order.signal_id,
            account=order.account,
            symbol=order.symbol,
            payload={"source": str(source), "kind": outcome.kind, "filled": str(outcome.filled)},
        )


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


def _refresh_order(order: OrderSnapshot, deadline: float) -> OrderSnapshot:
    """Ask the exchange about the order with lag retries, and record what it said."""
    client = gateway.get_client(order.account)
    delays = [0.0, *lookup_delays(ORDER_LOOKUP_TRIES - 1, ORDER_LOOKUP_BASE_S, ORDER_LOOKUP_FACTOR)]
    for delay in delays:
        if delay:
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
        try:
            seen = exchange_orders.fetch_own_order(
                client, order.symbol, order.exchange_order_id, order.client_order_id
            )
        except EXCHANGE_ERRORS as exc:
            logger.info("verify %s: lookup failed: %s", order.client_order_id, describe_error(exc))
            continue
        if seen is None:
            continue
        status = status_from_exchange(seen.status, seen.amount or order.amount, seen.filled)
        if status is None:
            continue
        fields = {"filled": seen.filled if seen.filled is not None else order.filled}
        if seen.id:
            fields["exchange_order_id"] = str(seen.id)
        if seen.average is not None and seen.filled:
            fields["average_price"] = seen.average
        return order_store.transition(
            order.client_order_id, status, payload={"source": "verification"}, **fields
        )
    return order


def verify_order(order: OrderSnapshot, settings: Settings) -> VerificationResult:
    """The verdict on the position this order should have produced."""
    deadline = time.monotonic() + settings.verify_budget_s
    outcomes: list[tuple[SourceName, SourceOutcome]] = []

    observation = _observation(order)
    if observation is None or observation.status == "open":
        order = _refresh_order(order, deadline)
        observation = _observation(order)
    order_outcome = order_verdict(
        observation or OrderObservation(status=None, amount=order.amount, filled=None)
    )
    _record_source(order, SourceName.ORDER, order_outcome)
    outcomes.append((SourceName.ORDER, order_outcome))
    result = decide(order.amount, outcomes, budget_exhausted=False, tolerance=Decimal(0))
    if result.verdict in (Verdict.VERIFIED, Verdict.FAILED):
        return result

    cached = cached_position_size(order.account, order.symbol)
    cache_outcome = position_outcome(None if cached is None else abs(cached))
    _record_source(order, SourceName.CACHE, cache_outcome)
    outcomes.append((SourceName.CACHE, cache_outcome))
    result = decide(order.amount, outcomes, budget_exhausted=False, tolerance=Decimal(0))
    if result.verdict in (Verdict.VERIFIED, Verdict.FAILED):
        return result

    for delay in [0.0, *lookup_delays(10, 0.5, 1.5)]:
        if delay:
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
        try:
            positions = fetch_positions(order.account, [order.symbol])
        except EXCHANGE_ERRORS as exc:
            logger.info(
                "verify %s: positions failed: %s", order.client_order_id, describe_error(exc)
            )
            continue
        size = sum((abs(p.size) for p in positions if p.symbol == order.symbol), Decimal(0))
        rest_outcome = position_outcome(size)
        _record_source(order, SourceName.REST, rest_outcome)
        outcomes.append((SourceName.REST, rest_outcome))
        result = decide(order.amount, outcomes, budget_exhausted=False, tolerance=Decimal(0))
        if result.verdict in (Verdict.VERIFIED, Verdict.FAILED):
            return result
    return decide(order.amount, outcomes, budget_exhausted=True, tolerance=Decimal(0))


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
    min_amount = amount_limits(account, symbol).minimum
    attempts = settings.flat_check_attempts
    interval_s = settings.flat_check_budget_s / attempts
    residuals: list[Decimal] = []
    check = FlatCheck(flat=False, residual=Decimal(0))
    for index in range(attempts):
        if index:
            time.sleep(interval_s)
        try:
            positions = fetch_positions(account, [symbol])
        except EXCHANGE_ERRORS as exc:
            logger.info("flat check %s %s: %s", account, symbol, describe_error(exc))
            continue
        residuals.append(sum((abs(p.size) for p in positions if p.symbol == symbol), Decimal(0)))
        check = flat_outcome(residuals[-1:], min_amount)
        if check.flat:
            break
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
