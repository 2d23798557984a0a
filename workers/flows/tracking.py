"""The order tracker: follows every order no run is working on to its end.

An order task ends when the exchange has accepted its order, or when the
outcome of its create stays in doubt; from then on the order is the tracker's:

- a **resting** order (``open``, ``partially_filled``) is fetched and what the
  exchange shows is recorded (fills, cancel, expiry); once it ends its fill is
  verified and booked, and the producer's result is replaced by the final one
  (the result store under the order's task id);
- an order **in doubt** (``submitting``/``unknown``) past the moment its run
  would have finished is looked up by client order id: seen → adopted; not
  seen → as the lifecycle core decides (keep looking, resend where that
  cannot double it, ``unknown`` with a critical alert, or rejected as not
  found at the give-up horizon);
- an **intent** nothing sent (its run died first) is sent again by re-enqueueing
  its task, while the signal is fresh.

Each order is handled under its lease, so a run that is still working on it is
never second-guessed. The tracking sweep runs this every few seconds; the
recovery sweep runs it too. A stream that pushes order updates records them
the same way (``record_sighting``).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select

from workers import redis_keys
from workers.app import app
from workers.coordination import try_lock
from workers.exchange.errors import VenueError
from workers.execution import lifecycle
from workers.execution.order_state import IN_DOUBT, RESTING, OrderStatus
from workers.flows.submission import Submission, record_sighting, release_order_lease
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.db import session_scope
from workers.store.models import Order
from workers.store.orders import OrderSnapshot

logger = logging.getLogger("execq.tracking")

AGED_CLOSE_PURPOSES = ("aged_close", "aged_chunk")
# Orders handled per sweep, oldest change first; the rest wait for the next sweep.
TRACKED_PER_SWEEP = 200


def orders_to_track(settings: Settings, now: datetime) -> list[OrderSnapshot]:
    """Resting orders, and orders in doubt or never sent that no run has touched lately."""
    stuck_before = now - timedelta(seconds=settings.recovery_stuck_after_s)
    resting = [status.value for status in RESTING]
    waiting = [OrderStatus.INTENT.value, *(status.value for status in IN_DOUBT)]
    with session_scope() as session:
        rows = session.scalars(
            select(Order)
            .where(
                or_(
                    Order.status.in_(resting),
                    and_(Order.status.in_(waiting), Order.updated_at < stuck_before),
                )
            )
            .order_by(Order.updated_at)
            .limit(TRACKED_PER_SWEEP)
        ).all()
        return [OrderSnapshot.of(row) for row in rows]


def track_orders(settings: Settings, now: datetime | None = None) -> Counter[str]:
    """Follow every order that needs it once; counts of what happened, by outcome."""
    now = now or datetime.now(UTC)
    counts: Counter[str] = Counter()
    for order in orders_to_track(settings, now):
        counts.update(follow_if_free(order, settings))
    return counts


def follow_if_free(
    order: OrderSnapshot,
    settings: Settings,
    statuses: frozenset[OrderStatus] | None = None,
) -> Counter[str]:
    """Follow the order once if no run holds it (and it is still in ``statuses``, by
    default not ended); what came of it, and of the stream updates handed over meanwhile."""
    counts: Counter[str] = Counter()
    cid = order.client_order_id
    lease = try_lock(redis_keys.order_lock(cid), settings.order_lock_ttl_s)
    if lease is None:
        counts["orders_busy"] += 1  # a run is working on it, and reads the stream's word
        return counts
    try:
        current = order_store.load_order(cid)
        if current is not None and (
            current.status in statuses if statuses is not None else not current.terminal
        ):
            counts[follow(current, settings, datetime.now(UTC))] += 1
    finally:
        handed = release_order_lease(lease, cid, settings)
    if handed is not None:
        counts[f"stream_{handed}"] += 1
    return counts


def follow(order: OrderSnapshot, settings: Settings, now: datetime) -> str:
    """One look at one order (its lease held by the caller); what came of it."""
    run = Submission(order=order, settings=settings, deadline=0.0)
    step = lifecycle.decide(
        run.facts(), lifecycle.Taken(by_sweep=True), run.venue.traits, now, run.timing
    )
    match step:
        case lifecycle.Send():
            reenqueue(order)
            return "orders_reenqueued"
        case lifecycle.Reject(error_class=error_class, reason=reason):
            order_store.transition(
                order.client_order_id,
                OrderStatus.REJECTED,
                payload={"reason": reason, "source": "tracking"},
                last_error_class=error_class,
                last_error=reason,
            )
            return "orders_rejected"
    try:
        seen = run.venue.fetch_order(
            order.symbol,
            exchange_order_id=order.exchange_order_id,
            client_order_id=order.client_order_id,
        )
    except VenueError as exc:
        logger.info("tracking %s: lookup failed: %s", order.client_order_id, exc.describe())
        return "lookups_failed"
    if seen is not None:
        adopted = record_sighting(order, seen, "tracking", settings)
        if adopted.status == order.status and adopted.filled == order.filled:
            return "orders_unchanged"
        finish(adopted)
        return "orders_adopted"
    if order.status in RESTING:
        return "orders_not_visible"
    return _not_seen(run, order, settings, now)


def _not_seen(run: Submission, order: OrderSnapshot, settings: Settings, now: datetime) -> str:
    step = lifecycle.decide(run.facts(), lifecycle.NotSeen(), run.venue.traits, now, run.timing)
    match step:
        case lifecycle.LookUp():
            return "orders_in_visibility_window"
        case lifecycle.Send():
            reenqueue(order)
            return "orders_reenqueued"
        case lifecycle.StayUnknown(alert=alert):
            run.stay_unknown(alert)
            return "orders_unknown"
        case lifecycle.GiveUp(reason=reason):
            finish(run.give_up(reason))
            return "orders_given_up"
        case lifecycle.Adopt(status=status):
            run.adopt(status, None, source="tracking")
            return "orders_adopted"
    return "orders_unchanged"


def finish(order: OrderSnapshot) -> None:
    """After the tracker recorded a change: verify and book a fill, and give the producer
    the order's final result under its task id."""
    if order.filled > order.booked_filled:
        app.send_task("verify_position", kwargs={"client_order_id": order.client_order_id})
    if order.terminal and order.task_id:
        # The backend never overwrites a finished task's result: drop it, then store.
        app.backend.forget(order.task_id)
        app.backend.store_result(order.task_id, order.summary(), "SUCCESS")


def reenqueue(order: OrderSnapshot) -> None:
    """Send the order's task again; it continues from the stored state."""
    if order.purpose in AGED_CLOSE_PURPOSES and order.aged_id is not None:
        app.send_task("close_aged_position", kwargs={"aged_id": order.aged_id})
        return
    kwargs: dict[str, Any] = {
        "signal_id": order.signal_id,
        "exchange": order.account,
        "symbol": order.symbol,
        "side": order.side,
        "amount": str(order.amount),
        "reduce_only": order.reduce_only,
        "purpose": order.purpose,
        "leg": order.leg,
        "position_id": order.position_id,
        "aged_id": order.aged_id,
    }
    if order.order_type == "limit":
        kwargs.update(price=str(order.price), time_in_force=order.time_in_force or "GTC")
        app.send_task("execute_limit_order", kwargs=kwargs, task_id=order.task_id)
    else:
        app.send_task("execute_market_order", kwargs=kwargs, task_id=order.task_id)
