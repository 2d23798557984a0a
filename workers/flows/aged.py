"""Aged positions: the close, wired to I/O (the sweep is ``workers.flows.aged_sweep``).

The rules are pure functions: phase, target and close record in
``workers.execution.aged``, the policy after failed closes in
``workers.execution.aged_close``, chunk plans in ``workers.execution.chunks``,
the episode's lifecycle in ``workers.execution.aged_state``. This module
loads state, calls them, talks to the exchange through the same exactly-once
submission path as every other order, and records each step through the
store's guarded writes. Nothing lives only in memory: a restarted worker
picks every episode up again from Postgres on the next sweep.

The sweep decides, the close task executes: the sweep records the first
price it sees at or past a target (close latency is measured from there),
applies the policy's widening and alerts, and claims the episodes whose
close is due (``active -> closing``); the close task re-reads the position
on the exchange and sends the whole close or the chunks. A close that does
not close the position is a failure, and the episode is ``active`` again,
waiting out its backoff.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from workers import redis_keys
from workers.coordination import LockNotAcquired, held_lock
from workers.exchange.positions import fetch_positions
from workers.exchange.prices import amount_limits
from workers.execution.aged import AgedPolicy, assess, book_differs
from workers.execution.aged_close import (
    CLOSES,
    AlertKind,
    AmountGrid,
    CloseAction,
    CloseDecision,
    CloseRules,
    EpisodeFacts,
    backoff_s,
    next_action,
)
from workers.execution.aged_state import TRACKED, AgedStatus
from workers.execution.client_ids import client_order_id
from workers.execution.order_state import OrderStatus
from workers.flows.submission import Requeue, Submission
from workers.flows.verification import check_flat, verify_and_book
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.aged import AgedView, aged_ids, load_aged, lock_aged, write_episode
from workers.store.db import session_scope
from workers.store.events import raise_alert, record_event
from workers.store.models import Order
from workers.store.orders import OrderSnapshot
from workers.store.positions import close_externally, correct_position, lock_open_position

logger = logging.getLogger("execq.aged")


def base_tolerance(policy: AgedPolicy, view: AgedView, now: datetime) -> Decimal:
    """The phase schedule's accepted loss now, before any widening."""
    return assess(policy, view.side, view.entry_price, view.opened_at, now).loss_tolerance_percent


def episode_facts(
    view: AgedView, size: Decimal, base_tolerance_percent: Decimal, chunks_closed: int = 0
) -> EpisodeFacts:
    """What the close policy needs of ``view``, with the position's real ``size``."""
    return EpisodeFacts(
        side=view.side,
        size=abs(size),
        target_price=view.target_price,
        failures=view.consecutive_failures,
        last_attempt_at=view.last_attempt_at,
        base_tolerance_percent=base_tolerance_percent,
        extra_tolerance_percent=view.extra_tolerance_percent,
        alerted_failures=view.alerted_failures,
        chunks_closed=chunks_closed,
    )


def _grid(account: str, symbol: str) -> AmountGrid:
    limits = amount_limits(account, symbol)
    return AmountGrid(step=limits.step, minimum=limits.minimum)


def give_up(session, episode: AgedView, decision: CloseDecision) -> None:
    """The policy gave up, or no order can close the position: stop and tell a person."""
    if not write_episode(
        session,
        episode,
        to=AgedStatus.UNCLOSABLE,
        event="aged_gave_up",
        payload={"reason": decision.reason, "consecutive_failures": episode.consecutive_failures},
        last_error=decision.reason,
    ):
        return
    raise_alert(
        session,
        AlertKind.UNCLOSABLE.value,
        f"{episode.account} {episode.symbol}: aged position of {episode.size} cannot be closed "
        f"by execq ({decision.reason}); close it by hand",
        account=episode.account,
        symbol=episode.symbol,
        position_id=episode.position_id,
        aged_id=episode.id,
        payload={"reason": decision.reason},
    )


# --- the close --------------------------------------------------------------------------


def _in_flight_close(aged_id: int) -> OrderSnapshot | None:
    """The episode's close a run is still working on (a close that stayed unknown past
    its window is left to the sweeps: the next close is a fresh leg sized from the
    exchange's position)."""
    with session_scope() as session:
        order = session.scalars(
            select(Order)
            .where(Order.aged_id == aged_id, order_store.being_worked_on())
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


def _summary(view: AgedView | None, aged_id: int, **extra: Any) -> dict[str, Any]:
    return {"aged_id": aged_id, "status": None if view is None else str(view.status), **extra}


def close_aged(aged_id: int, settings: Settings) -> dict[str, Any]:
    """Close one aged position under its position lock. Raises Requeue to come back later."""
    view = load_aged(aged_id)
    if view is None or view.status not in TRACKED:
        return _summary(view, aged_id)
    lock_key = redis_keys.position_lock(view.account, view.symbol)
    try:
        with held_lock(lock_key, settings.position_lock_ttl_s):
            return _close_locked(aged_id, settings)
    except LockNotAcquired:
        raise Requeue(1.0, f"position lock busy: {lock_key}") from None


def _close_locked(aged_id: int, settings: Settings) -> dict[str, Any]:
    deadline = time.monotonic() + settings.run_budget_s
    view = load_aged(aged_id)  # again, now that the lock is held
    if view is None or view.status not in TRACKED:
        return _summary(view, aged_id)
    order = _in_flight_close(view.id)
    if order is not None:
        order = Submission(order=order, settings=settings, deadline=deadline).run()
        return _settle_close(view, order, settings)
    if view.status != AgedStatus.CLOSING:
        return _summary(view, aged_id)  # only a claimed episode is closed
    size = _exchange_size(view.account, view.symbol)
    if size == 0:
        if order_store.unsettled_orders(view.account, view.symbol):
            raise Requeue(2.0, "flat on the exchange with orders on the symbol unsettled")
        return _record_closed_externally(view)
    if book_differs(view.side, view.size, size):
        # The difference is probably fills not booked yet, or booked but not yet
        # in the exchange's lagging positions read: correcting the book now would
        # count them twice, or close the wrong size. The recovery sweep's rule.
        recent = datetime.now(UTC) - timedelta(seconds=settings.recovery_stuck_after_s)
        if order_store.unsettled_orders(view.account, view.symbol, changed_since=recent):
            raise Requeue(2.0, "orders on the symbol still unsettled")
        view = _correct_size(view, size)
    now = datetime.now(UTC)
    policy = AgedPolicy.from_settings(settings.aged)
    rules = CloseRules.from_settings(settings.aged)
    grid = _grid(view.account, view.symbol)
    # The claim proved the target reached: the close task decides how to close, not whether.
    decision = next_action(
        episode_facts(view, size, base_tolerance(policy, view, now)),
        grid,
        view.target_price,
        now,
        rules,
    )
    if decision.action == CloseAction.GIVE_UP:
        with session_scope() as session:
            episode = lock_aged(session, view.id)
            if episode.status in TRACKED:
                give_up(session, episode, decision)
        return _summary(load_aged(view.id), aged_id, reason=decision.reason)
    if decision.action == CloseAction.CLOSE_CHUNK:
        return _close_in_chunks(view, decision, grid, rules, policy, settings, deadline)
    if decision.action == CloseAction.CLOSE_WHOLE:
        attempt = _close_orders_count(view.id) + 1
        assert decision.amount is not None
        order = _close_intent(
            view,
            signal_id=f"aged-{view.id}",
            leg=f"close{attempt}",
            amount=decision.amount,
            purpose="aged_close",
        )
        order = Submission(order=order, settings=settings, deadline=deadline).run()
        return _settle_close(view, order, settings)
    return _release(view, decision)


def _verify(order: OrderSnapshot, settings: Settings) -> None:
    """Verify and book a close's fill (every filled order is verified). Booking the fill
    that takes the position to zero ends the episode ``closed``, with its record."""
    if order.filled > 0:
        verify_and_book(order.client_order_id, settings, order=order)


def _settle_close(
    view: AgedView, order: OrderSnapshot, settings: Settings, *, verified: bool = False
) -> dict[str, Any]:
    """After a close order ended: closed (then check flat), or one more failure."""
    if not verified:
        _verify(order, settings)
    current = load_aged(view.id)
    assert current is not None
    if current.status == AgedStatus.CLOSED:
        flat = check_flat(
            view.account,
            view.symbol,
            settings,
            position_id=view.position_id,
            context=f"aged close {order.client_order_id}",
        )
        return _summary(
            current,
            view.id,
            reason=current.close_reason,
            close_price=str(current.close_price),
            attempts=current.attempts,
            flat=flat.flat,
        )
    error = order.last_error or (
        f"close order ended {order.status} with {order.filled} filled"
        if order.status != OrderStatus.FILLED
        else "close order filled; the position is still open"
    )
    return _record_failure(view, settings, order, error)


def _record_failure(
    view: AgedView, settings: Settings, order: OrderSnapshot | None, error: str
) -> dict[str, Any]:
    now = datetime.now(UTC)
    rules = CloseRules.from_settings(settings.aged)
    order_ids = {
        "order_id": order.id if order else None,
        "client_order_id": order.client_order_id if order else None,
        "error_class": order.last_error_class if order else None,
    }
    with session_scope() as session:
        episode = lock_aged(session, view.id)
        if episode.status not in TRACKED:
            # The episode ended while this close was in flight (another order closed
            # its position): the failed close changes nothing any more.
            record_event(
                session,
                "aged_close_failed",
                **aged_ids(episode),
                **order_ids,
                payload={"error": error, "episode_already": str(episode.status)},
            )
            return _summary(episode, view.id, error=error)
        failures = episode.consecutive_failures + 1
        write_episode(
            session,
            episode,
            to=AgedStatus.ACTIVE if episode.status == AgedStatus.CLOSING else None,
            event="aged_close_failed",
            now=now,
            attempt=episode.attempts + 1,
            **order_ids,
            payload={
                "error": error,
                "consecutive_failures": failures,
                "next_close_in_s": backoff_s(failures, rules),
            },
            attempts=episode.attempts + 1,
            consecutive_failures=failures,
            last_error=error,
            last_attempt_at=now,
        )
    return {
        "aged_id": view.id,
        "status": str(AgedStatus.ACTIVE),
        "error": error,
        "consecutive_failures": failures,
    }


def _release(view: AgedView, decision: CloseDecision) -> dict[str, Any]:
    """A claimed close that is not due after all (the size read says otherwise)."""
    with session_scope() as session:
        episode = lock_aged(session, view.id)
        if episode.status == AgedStatus.CLOSING:
            write_episode(
                session,
                episode,
                to=AgedStatus.ACTIVE,
                event="aged_close_released",
                payload={"action": str(decision.action), "reason": decision.reason},
            )
    return _summary(load_aged(view.id), view.id, action=str(decision.action))


def _record_closed_externally(view: AgedView) -> dict[str, Any]:
    """Flat on the exchange with nothing of ours unsettled: someone else closed it."""
    now = datetime.now(UTC)
    with session_scope() as session:
        position = lock_open_position(session, view.account, view.symbol)
        if position is not None and position.id == view.position_id:
            close_externally(session, position, now)
    return _summary(load_aged(view.id), view.id)


def _correct_size(view: AgedView, exchange_size: Decimal) -> AgedView:
    with session_scope() as session:
        episode = lock_aged(session, view.id)
        record_event(
            session,
            "position_size_changed",
            **aged_ids(episode),
            payload={"book_size": str(episode.size), "exchange_size": str(exchange_size)},
        )
        correct_position(
            session,
            episode.position_id,
            size=exchange_size,
            entry_price=None,
            now=datetime.now(UTC),
        )
    refreshed = load_aged(view.id)
    assert refreshed is not None
    return refreshed


# --- the partial-chunk fallback -----------------------------------------------------------


def _close_in_chunks(
    view: AgedView,
    decision: CloseDecision,
    grid: AmountGrid,
    rules: CloseRules,
    policy: AgedPolicy,
    settings: Settings,
    deadline: float,
) -> dict[str, Any]:
    """Close chunk by chunk, re-reading the position between chunks; the policy plans
    each next chunk from what is really left. A chunk that does not fill ends the
    round as one failure."""
    signal_id = f"aged-{view.id}-r{view.attempts}"
    chunks_closed = 0
    while True:
        assert decision.amount is not None
        order = _close_intent(
            view,
            signal_id=signal_id,
            leg=f"chunk{chunks_closed + 1}",
            amount=decision.amount,
            purpose="aged_chunk",
        )
        order = Submission(order=order, settings=settings, deadline=deadline).run()
        _verify(order, settings)
        order_store.record_order_event(
            order.client_order_id,
            "partial_close",
            {
                "chunk": chunks_closed + 1,
                "amount": str(decision.amount),
                "filled": str(order.filled),
                "status": str(order.status),
            },
        )
        current = load_aged(view.id)
        assert current is not None
        if order.status != OrderStatus.FILLED or current.status not in TRACKED:
            return _settle_close(view, order, settings, verified=True)
        chunks_closed += 1
        remaining = abs(_exchange_size(view.account, view.symbol))
        if remaining == 0 or chunks_closed > rules.chunk_count:
            return _settle_close(view, order, settings, verified=True)
        now = datetime.now(UTC)
        decision = next_action(
            episode_facts(current, remaining, base_tolerance(policy, current, now), chunks_closed),
            grid,
            current.target_price,
            now,
            rules,
        )
        if decision.action not in CLOSES:
            return _record_failure(
                view,
                settings,
                order,
                f"{remaining} left after {chunks_closed} chunks: {decision.reason}",
            )
