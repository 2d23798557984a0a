"""Aged positions: the phase sweep and the close, wired to I/O.

The rules (phase, target, tolerance, close reason, chunk plans) are pure
functions in ``workers.execution.aged`` and ``workers.execution.chunks``;
this module loads state, calls them, talks to the exchange through the same
exactly-once submission path as every other order, and records each step.
Nothing lives only in memory: a restarted worker picks every active row up
again from Postgres on the next sweep.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, select

from workers import redis_keys
from workers.coordination import LockNotAcquired, held_lock
from workers.exchange import gateway
from workers.exchange.errors import VenueError
from workers.exchange.positions import fetch_positions
from workers.exchange.prices import amount_limits, cache_prices
from workers.exchange.reads import read_with_retries
from workers.execution.aged import (
    AgedPhase,
    AgedPolicy,
    assess,
    book_differs,
    close_reason,
    signed_book_size,
    target_reached,
    widen_tolerance,
)
from workers.execution.chunks import next_chunk, plan_chunks
from workers.execution.client_ids import client_order_id
from workers.execution.order_state import IN_FLIGHT, OrderStatus
from workers.execution.positions import PositionState, roi_percent
from workers.flows.submission import Requeue, Submission
from workers.flows.verification import check_flat
from workers.observability import metrics
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.aged import (
    ACTIVE_STATUSES,
    AgedView,
    aged_ids,
    claim_for_close,
    load_aged,
    lock_aged,
)
from workers.store.db import session_scope
from workers.store.events import raise_alert, record_event
from workers.store.models import AgedPosition, Order, Position
from workers.store.orders import OrderSnapshot
from workers.store.positions import book_order_fill

logger = logging.getLogger("execq.aged")


def _json_policy(policy: AgedPolicy) -> dict[str, str]:
    return {name: str(value) for name, value in vars(policy).items()}


# --- the sweep --------------------------------------------------------------------------


@dataclass
class SweepReport:
    positions: int = 0
    detected: int = 0
    phase_changes: int = 0
    closes_enqueued: list[int] = field(default_factory=list)
    by_phase: dict[str, int] = field(default_factory=dict)
    price_errors: int = 0


def sweep_aged(settings: Settings, now: datetime | None = None) -> SweepReport:
    """Detect aged positions, move phases, and return the ids whose target is reached."""
    now = now or datetime.now(UTC)
    policy = AgedPolicy.from_settings(settings.aged)
    report = SweepReport()
    watch: list[tuple[int, str, str, str, Decimal]] = []
    with session_scope() as session:
        rows = session.execute(
            select(Position, AgedPosition)
            .outerjoin(
                AgedPosition,
                and_(
                    AgedPosition.position_id == Position.id,
                    AgedPosition.status.in_(("active", "closing", "unclosable")),
                ),
            )
            .where(Position.status == "open")
        ).all()
        report.positions = len(rows)
        for position, aged in rows:
            if aged is not None and aged.status == "unclosable":
                continue  # waiting for a person; alerted once
            assessment = assess(
                policy,
                position.side,
                position.entry_price,
                position.opened_at,
                now,
                extra_tolerance_percent=aged.extra_tolerance_percent if aged else Decimal(0),
                tolerance_cap_percent=settings.aged.tolerance_widen_cap_percent,
            )
            if assessment.phase == AgedPhase.NONE:
                continue
            if aged is None:
                aged = _detect(session, position, assessment, policy, now)
                report.detected += 1
            else:
                report.phase_changes += _update_phase(session, aged, position, assessment, now)
            report.by_phase[aged.phase] = report.by_phase.get(aged.phase, 0) + 1
            if aged.status == "active" and aged.target_price is not None:
                watch.append(
                    (aged.id, position.account, position.symbol, position.side, aged.target_price)
                )
    prices = _prices(watch, report, settings)
    for aged_id, account, symbol, side, target in watch:
        price = prices.get((account, symbol))
        if (
            price is not None
            and target_reached(side, price, target)
            and claim_for_close(aged_id, now)
        ):
            report.closes_enqueued.append(aged_id)
    return report


def _detect(session, position: Position, assessment, policy: AgedPolicy, now: datetime):
    aged = AgedPosition(
        position_id=position.id,
        status="active",
        phase=str(assessment.phase),
        detected_at=now,
        phase_changed_at=now,
        target_price=assessment.target_price,
        loss_tolerance_percent=assessment.loss_tolerance_percent,
        extra_tolerance_percent=Decimal(0),
        config=_json_policy(policy),
    )
    session.add(aged)
    session.flush()
    record_event(
        session,
        "aged_detected",
        **aged_ids(aged, position),
        payload={
            "phase": aged.phase,
            "target_price": str(aged.target_price),
            "age_s": round(assessment.age_s, 3),
            "config": aged.config,
        },
    )
    return aged


def _update_phase(session, aged: AgedPosition, position: Position, assessment, now) -> int:
    changed = 0
    if aged.phase != str(assessment.phase):
        record_event(
            session,
            "aged_phase_changed",
            **aged_ids(aged, position),
            payload={
                "from": aged.phase,
                "to": str(assessment.phase),
                "target_price": str(assessment.target_price),
                "loss_tolerance_percent": str(assessment.loss_tolerance_percent),
            },
        )
        aged.phase = str(assessment.phase)
        aged.phase_changed_at = now
        changed = 1
    elif aged.loss_tolerance_percent != assessment.loss_tolerance_percent:
        record_event(
            session,
            "aged_tolerance_changed",
            **aged_ids(aged, position),
            payload={
                "from": str(aged.loss_tolerance_percent),
                "to": str(assessment.loss_tolerance_percent),
                "target_price": str(assessment.target_price),
            },
        )
    if (
        aged.target_price != assessment.target_price
        or aged.loss_tolerance_percent != assessment.loss_tolerance_percent
    ):
        aged.target_price = assessment.target_price
        aged.loss_tolerance_percent = assessment.loss_tolerance_percent
        aged.updated_at = now
    return changed


def _prices(watch, report: SweepReport, settings: Settings) -> dict[tuple[str, str], Decimal]:
    """Last prices of the watched symbols: one fetch_tickers per exchange, not per account.

    Accounts on the same exchange and mode see the same market, so their
    symbols are asked for together through one of them.
    """
    accounts_by_venue: dict[tuple[str, str], set[str]] = {}
    symbols_by_venue: dict[tuple[str, str], set[str]] = {}
    for _, account, symbol, _, _ in watch:
        configured = settings.account(account)
        venue = (configured.ccxt_class, configured.mode)
        accounts_by_venue.setdefault(venue, set()).add(account)
        symbols_by_venue.setdefault(venue, set()).add(symbol)
    prices: dict[tuple[str, str], Decimal] = {}
    for venue, symbols in symbols_by_venue.items():
        accounts = sorted(accounts_by_venue[venue])
        try:
            exchange = gateway.venue(accounts[0])
            wanted = sorted(symbols)
            last_prices = read_with_retries(
                lambda e=exchange, w=wanted: e.last_prices(w), budget_s=1.0
            )
        except VenueError as exc:
            report.price_errors += 1
            logger.warning("aged sweep: tickers on %s failed: %s", venue[0], exc.describe())
            continue
        for symbol, price in last_prices.items():
            for account in accounts:
                prices[(account, symbol)] = price
    cache_prices(prices)
    return prices


# --- the close --------------------------------------------------------------------------


def _in_flight_close(aged_id: int) -> OrderSnapshot | None:
    with session_scope() as session:
        order = session.scalars(
            select(Order)
            .where(Order.aged_id == aged_id, Order.status.in_([s.value for s in IN_FLIGHT]))
            .order_by(Order.id.desc())
            .limit(1)
        ).one_or_none()
        return None if order is None else OrderSnapshot.of(order)


def _close_orders_count(aged_id: int) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(Order.aged_id == aged_id)) or 0


def _exchange_size(account: str, symbol: str) -> Decimal:
    positions = fetch_positions(account, [symbol])
    return sum((p.size for p in positions if p.symbol == symbol), Decimal(0))


def _close_intent(
    view: AgedView, *, signal_id: str, leg: str, amount: Decimal, purpose: str
) -> OrderSnapshot:
    cid = client_order_id(signal_id, leg)
    order, _ = order_store.ensure_intent(
        {
            "client_order_id": cid,
            "signal_id": signal_id,
            "leg": leg,
            "account": view.account,
            "symbol": view.symbol,
            "side": "sell" if view.side == "long" else "buy",
            "order_type": "market",
            "time_in_force": None,
            "amount": amount,
            "price": None,
            "reduce_only": True,
            "purpose": purpose,
            "position_id": view.position_id,
            "aged_id": view.id,
            "metadata_": {},
        }
    )
    return order


def close_aged(aged_id: int, settings: Settings) -> dict[str, Any]:
    """Close one aged position under its position lock. Raises Requeue to come back later."""
    view = load_aged(aged_id)
    if view is None or view.status not in ACTIVE_STATUSES:
        return {"aged_id": aged_id, "status": None if view is None else view.status}
    lock_key = redis_keys.position_lock(view.account, view.symbol)
    try:
        with held_lock(lock_key, settings.position_lock_ttl_s):
            return _close_locked(view, settings)
    except LockNotAcquired:
        raise Requeue(1.0, f"position lock busy: {lock_key}") from None


def _close_locked(view: AgedView, settings: Settings) -> dict[str, Any]:
    deadline = time.monotonic() + settings.run_budget_s
    order = _in_flight_close(view.id)
    if order is None:
        size = _exchange_size(view.account, view.symbol)
        if size == 0:
            return _record_closed_externally(view)
        if book_differs(view.side, view.size, size):
            # The difference is probably fills not booked yet, or booked but not yet
            # in the exchange's lagging positions read: correcting the book now would
            # count them twice, or close the wrong size. The recovery sweep's rule.
            recent = datetime.now(UTC) - timedelta(seconds=settings.recovery_stuck_after_s)
            if order_store.unsettled_orders(view.account, view.symbol, changed_since=recent):
                raise Requeue(2.0, "orders on the symbol still unsettled")
            view = _correct_size(view, size)
        if abs(size) < amount_limits(view.account, view.symbol).minimum:
            return _record_unclosable(view, abs(size))
        if view.consecutive_failures >= settings.aged.failures_before_chunks:
            return close_in_chunks(view, settings)
        attempt = _close_orders_count(view.id) + 1
        order = _close_intent(
            view,
            signal_id=f"aged-{view.id}",
            leg=f"close{attempt}",
            amount=abs(size),
            purpose="aged_close",
        )
    order = Submission(order=order, settings=settings, deadline=deadline).run()
    return _settle_close(view, order, settings)


def _settle_close(view: AgedView, order: OrderSnapshot, settings: Settings) -> dict[str, Any]:
    booking = book_order_fill(order.client_order_id) if order.filled > 0 else None
    if booking is not None and booking.size_after == 0 and order.status == OrderStatus.FILLED:
        flat = check_flat(
            view.account,
            view.symbol,
            settings,
            position_id=view.position_id,
            context=f"aged close {order.client_order_id}",
        )
        if flat.flat:
            return _record_closed(view, order, booking.realized_pnl)
    return _record_failure(view, settings, order)


def _record_closed(view: AgedView, order: OrderSnapshot, realized: Decimal) -> dict[str, Any]:
    now = datetime.now(UTC)
    close_price = order.average_price or Decimal(0)
    signed = signed_book_size(view.side, view.size)
    pnl_percent = roi_percent(PositionState(signed, view.entry_price, Decimal(0)), close_price)
    reason = close_reason(
        view.side,
        view.entry_price,
        close_price,
        AgedPhase(view.phase),
        view.loss_tolerance_percent,
    )
    with session_scope() as session:
        aged, position = lock_aged(session, view.id)
        reached = aged.target_reached_at or now
        filled_at = order.acked_at or now
        aged.status = "closed"
        aged.close_order_id = order.id
        aged.close_price = close_price
        aged.close_pnl = realized
        aged.close_pnl_percent = pnl_percent
        aged.close_reason = reason
        aged.attempts += 1
        aged.consecutive_failures = 0
        aged.close_duration_ms = max(0, int((filled_at - reached).total_seconds() * 1000))
        metrics.observe_close_latency(aged.close_duration_ms / 1000)
        aged.closed_at = now
        aged.updated_at = now
        record_event(
            session,
            "aged_closed",
            **aged_ids(aged, position),
            order_id=order.id,
            client_order_id=order.client_order_id,
            attempt=aged.attempts,
            payload={
                "reason": reason,
                "close_price": str(close_price),
                "pnl": str(realized),
                "pnl_percent": str(pnl_percent),
                "duration_ms": aged.close_duration_ms,
                "phase": aged.phase,
            },
        )
        return {
            "aged_id": view.id,
            "status": "closed",
            "reason": reason,
            "close_price": str(close_price),
            "attempts": aged.attempts,
        }


def _record_failure(
    view: AgedView, settings: Settings, order: OrderSnapshot | None, error: str | None = None
) -> dict[str, Any]:
    now = datetime.now(UTC)
    error = (
        error
        or (order.last_error if order else None)
        or (f"close order ended {order.status} with {order.filled} filled" if order else "unknown")
    )
    with session_scope() as session:
        aged, position = lock_aged(session, view.id)
        if aged.status not in ACTIVE_STATUSES:
            # The episode ended while this close was in flight: another order closed
            # its position (superseded). The failed close changes nothing any more;
            # making the episode active again would leave it without an open position,
            # never swept again (chaos: an aged episode stuck).
            record_event(
                session,
                "aged_close_failed",
                **aged_ids(aged, position),
                order_id=order.id if order else None,
                client_order_id=order.client_order_id if order else None,
                error_class=order.last_error_class if order else None,
                payload={"error": error, "episode_already": aged.status},
            )
            return {"aged_id": view.id, "status": aged.status, "error": error}
        aged.attempts += 1
        aged.consecutive_failures += 1
        aged.last_error = error
        aged.status = "active"
        aged.updated_at = now
        record_event(
            session,
            "aged_close_failed",
            **aged_ids(aged, position),
            order_id=order.id if order else None,
            client_order_id=order.client_order_id if order else None,
            attempt=aged.attempts,
            error_class=order.last_error_class if order else None,
            payload={"error": error, "consecutive_failures": aged.consecutive_failures},
        )
        if aged.consecutive_failures == settings.aged.failures_before_alert:
            raise_alert(
                session,
                "aged_close_failing",
                f"aged close of {position.account} {position.symbol} failed "
                f"{aged.consecutive_failures} times in a row: {error}",
                account=position.account,
                symbol=position.symbol,
                position_id=position.id,
                aged_id=aged.id,
            )
        return {
            "aged_id": view.id,
            "status": "active",
            "error": error,
            "consecutive_failures": aged.consecutive_failures,
        }


def _record_closed_externally(view: AgedView) -> dict[str, Any]:
    now = datetime.now(UTC)
    with session_scope() as session:
        aged, position = lock_aged(session, view.id)
        aged.status = "closed_externally"
        aged.closed_at = now
        aged.updated_at = now
        if position.status == "open":
            position.status = "closed_externally"
            position.closed_at = now
            position.close_reason = "closed_externally"
        record_event(
            session,
            "closed_externally",
            **aged_ids(aged, position),
            payload={"context": "aged close found no position on the exchange"},
        )
    return {"aged_id": view.id, "status": "closed_externally"}


def _record_unclosable(view: AgedView, size: Decimal) -> dict[str, Any]:
    """Below the market's minimum order size no order can close it: stop and tell a person."""
    now = datetime.now(UTC)
    with session_scope() as session:
        aged, position = lock_aged(session, view.id)
        aged.status = "unclosable"
        aged.last_error = f"size {size} is below the market's minimum order size"
        aged.closed_at = now
        aged.updated_at = now
        raise_alert(
            session,
            "aged_position_unclosable",
            f"{position.account} {position.symbol}: aged position of {size} is below the "
            "minimum order size and cannot be closed by an order; close it by hand",
            account=position.account,
            symbol=position.symbol,
            position_id=position.id,
            aged_id=aged.id,
        )
    return {"aged_id": view.id, "status": "unclosable"}


def _correct_size(view: AgedView, exchange_size: Decimal) -> AgedView:
    with session_scope() as session:
        aged, position = lock_aged(session, view.id)
        record_event(
            session,
            "position_size_changed",
            **aged_ids(aged, position),
            payload={"book_size": str(position.size), "exchange_size": str(exchange_size)},
        )
        position.size = abs(exchange_size)
        position.side = "long" if exchange_size > 0 else "short"
        position.updated_at = datetime.now(UTC)
    refreshed = load_aged(view.id)
    assert refreshed is not None
    return refreshed


# --- the partial-chunk fallback -----------------------------------------------------------


def close_in_chunks(view: AgedView, settings: Settings) -> dict[str, Any]:
    """Close in chunks at the market's precision, re-reading the position between chunks.

    When the position is too small to split, widen the accepted loss instead
    (+2 points, capped) and keep tracking.
    """
    deadline = time.monotonic() + settings.run_budget_s
    limits = amount_limits(view.account, view.symbol)
    step, minimum = limits.step, limits.minimum
    plan = plan_chunks(view.size, settings.aged.chunk_count, step, minimum)
    if not plan.can_help:
        return _widen(view, settings, plan.reason)
    signal_id = f"aged-{view.id}-r{view.attempts}"
    last: OrderSnapshot | None = None
    realized = Decimal(0)
    for index in range(len(plan.chunks)):
        remaining = abs(_exchange_size(view.account, view.symbol))
        if remaining == 0:
            break
        chunks_left = len(plan.chunks) - index
        amount = (
            remaining if chunks_left == 1 else next_chunk(remaining, chunks_left, step, minimum)
        )
        order = _close_intent(
            view,
            signal_id=signal_id,
            leg=f"chunk{index + 1}",
            amount=amount,
            purpose="aged_chunk",
        )
        order = Submission(order=order, settings=settings, deadline=deadline).run()
        booking = book_order_fill(order.client_order_id) if order.filled > 0 else None
        if booking is not None:
            realized += booking.realized_pnl
        order_store.record_order_event(
            order.client_order_id,
            "partial_close",
            {
                "chunk": index + 1,
                "of": len(plan.chunks),
                "amount": str(amount),
                "filled": str(order.filled),
                "status": str(order.status),
            },
        )
        last = order
        if order.status != OrderStatus.FILLED:
            return _record_failure(view, settings, order)
    flat = check_flat(
        view.account,
        view.symbol,
        settings,
        position_id=view.position_id,
        context=f"aged chunk close {signal_id}",
    )
    if flat.flat and last is not None:
        return _record_closed(view, last, realized)
    return _record_failure(view, settings, last, error="position not flat after chunks")


def _widen(view: AgedView, settings: Settings, why: str) -> dict[str, Any]:
    with session_scope() as session:
        aged, position = lock_aged(session, view.id)
        before = aged.extra_tolerance_percent
        aged.extra_tolerance_percent = widen_tolerance(
            before,
            settings.aged.tolerance_widen_step_percent,
            settings.aged.tolerance_widen_cap_percent,
        )
        aged.status = "active"
        aged.updated_at = datetime.now(UTC)
        record_event(
            session,
            "aged_tolerance_widened",
            **aged_ids(aged, position),
            payload={"from": str(before), "to": str(aged.extra_tolerance_percent), "why": why},
        )
        return {
            "aged_id": view.id,
            "status": "active",
            "widened_to": str(aged.extra_tolerance_percent),
        }
