"""The recovery sweep: find out what is true on the exchange and repair the record.

Runs every minute and once when a worker starts. Steps, each counted in one
``recovery_sweep`` event:

0. signals a producer recorded in the outbox (``workers.producer``) that
   never reached a worker and are no longer in the broker: sent again with
   the same task id, or, past the resubmit age, recorded as rejected with a
   critical alert (``workers.execution.outbox``);
1. orders stuck in ``intent``/``submitting``/``unknown`` (or resting with no
   task following them) past a threshold: looked up by client order id;
   found → adopt the exchange's state; absent → re-enqueue the leg when it
   should still happen (its task looks it up again over the visibility window
   before sending), else mark it ``rejected`` with the reason;
2. fills not yet in the position book → ``verify_position`` again;
3. positions per account reconciled with ``fetch_positions``: orphan →
   adopted and alerted (or, when the exchange reports no entry price, left
   out with an ``orphan_not_adopted`` event: a book entry of 0 would make
   every PnL and aged target of it wrong); size or entry off by more than
   1 % → corrected (an entry the exchange does not report keeps the book's);
   flat on the exchange → ``closed_externally``. Symbols with orders in
   flight or fresh activity are skipped: their fills are not booked yet, and
   adopting them would book them twice;
4. aged closes marked ``closing`` whose task is gone → enqueued again.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select

from workers import redis_keys
from workers.app import app
from workers.coordination import kill_switch_state, lock_holder_exists, try_lock
from workers.exchange import gateway
from workers.exchange import orders as exchange_orders
from workers.exchange.positions import HedgeModeUnsupported, fetch_positions
from workers.exchange.reads import EXCHANGE_ERRORS
from workers.execution import reconcile as rules
from workers.execution.aged_state import AgedStatus
from workers.execution.order_state import (
    IN_DOUBT,
    IN_FLIGHT,
    RESTING,
    TERMINAL,
    OrderStatus,
    status_from_exchange,
)
from workers.execution.outbox import Delivery, OutboxSignal, delivery_verdict
from workers.execution.position_state import HELD, status_values
from workers.flows.submission import describe_error, visibility_deadline
from workers.redis_client import get_redis
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.db import session_scope
from workers.store.events import raise_alert, record_event
from workers.store.models import AgedPosition, Order, Position, Signal
from workers.store.orders import OrderSnapshot
from workers.store.outbox import (
    OutboxMessage,
    mark_expired,
    mark_sent_again,
    message_of,
    outbox_view,
    settle_arrived,
    unsettled_sent_before,
)
from workers.store.positions import (
    close_position,
    correct_position,
    lock_open_position,
    open_new_position,
)

logger = logging.getLogger("execq.recovery")

AGED_CLOSE_PURPOSES = ("aged_close", "aged_chunk")
# kombu's Redis transport keeps reserved (popped, not yet acknowledged) messages here.
UNACKED_KEY = "unacked"
BROKER_SCAN_CHUNK = 1000


def run_recovery(settings: Settings) -> dict[str, int]:
    counts: Counter[str] = Counter()
    now = datetime.now(UTC)
    stuck_before = now - timedelta(seconds=settings.recovery_stuck_after_s)
    counts.update(redeliver_lost_signals(settings, now))
    for order in _stuck_orders(stuck_before):
        counts[_resolve_stuck(order, settings, now)] += 1
    for cid in _unbooked_fills(stuck_before):
        app.send_task("verify_position", kwargs={"client_order_id": cid})
        counts["reverify_enqueued"] += 1
    # Positions first, then the busy symbols: an order whose intent row appears
    # after this read may already have filled on the exchange, and must not be
    # taken for an orphan (its own verification books it).
    exchange_positions: dict[str, list] = {}
    for account in settings.accounts:
        try:
            exchange_positions[account.name] = fetch_positions(account.name)
        except HedgeModeUnsupported as exc:
            counts["hedge_mode_refused"] += 1
            with session_scope() as session:
                raise_alert(session, "hedge_mode_unsupported", str(exc), account=account.name)
        except EXCHANGE_ERRORS as exc:
            counts["accounts_unreachable"] += 1
            logger.warning(
                "recovery: positions on %s failed: %s", account.name, describe_error(exc)
            )
    busy = _busy_symbols(stuck_before)
    for account_name, positions in exchange_positions.items():
        counts.update(_reconcile_account(account_name, positions, settings, busy, now))
    counts["aged_closes_reenqueued"] += _reenqueue_aged_closes(stuck_before)
    with session_scope() as session:
        record_event(session, "recovery_sweep", payload=dict(counts))
    return dict(counts)


# --- 0. signals that never reached a worker ----------------------------------------------


def redeliver_lost_signals(settings: Settings, now: datetime) -> Counter[str]:
    counts: Counter[str] = Counter()
    with session_scope() as session:
        counts["signals_arrived"] = settle_arrived(session, now)
        rows = unsettled_sent_before(
            session, now - timedelta(seconds=settings.recovery_stuck_after_s)
        )
        candidates = {row.task_id: (outbox_view(row), message_of(row)) for row in rows}
    if not candidates:
        return counts
    in_broker = _messages_in_broker(set(candidates))
    # A message popped after the first read may have arrived while the broker was read.
    with session_scope() as session:
        settle_arrived(session, now, candidates)
        missing = session.scalars(
            select(Signal.task_id).where(
                Signal.task_id.in_(list(candidates)), Signal.settled_at.is_(None)
            )
        ).all()
    for task_id in missing:
        signal, message = candidates[task_id]
        verdict = delivery_verdict(
            signal,
            now,
            in_broker=task_id in in_broker,
            retry_after_s=settings.recovery_stuck_after_s,
            max_age_s=settings.recovery_resubmit_max_age_s,
        )
        if verdict is Delivery.REDELIVER:
            _redeliver(message, signal, now)
            counts["signals_redelivered"] += 1
        elif verdict is Delivery.EXPIRE:
            _expire(message, signal, now, settings)
            counts["signals_expired"] += 1
        else:
            counts["signals_in_broker" if task_id in in_broker else "signals_backing_off"] += 1
    return counts


def _messages_in_broker(task_ids: set[str]) -> set[str]:
    """Those of ``task_ids`` whose message is still in the broker: waiting in the queue, or
    reserved by a worker (kombu's unacknowledged hash, which also holds retries' ETAs)."""
    client = get_redis()
    found: set[str] = set()
    queue = app.conf.task_default_queue
    length = client.llen(queue)
    for start in range(0, length, BROKER_SCAN_CHUNK):
        for raw in client.lrange(queue, start, start + BROKER_SCAN_CHUNK - 1):
            found.add(_message_task_id(json.loads(raw)))
    for raw in client.hvals(UNACKED_KEY):
        found.add(_message_task_id(json.loads(raw)[0]))
    return found & task_ids


def _message_task_id(message: dict[str, Any]) -> str:
    return str(message.get("headers", {}).get("id"))


def _redeliver(message: OutboxMessage, signal: OutboxSignal, now: datetime) -> None:
    app.send_task(message.task_name, kwargs=message.kwargs, task_id=message.task_id)
    with session_scope() as session:
        mark_sent_again(session, message.task_id, now)
        record_event(
            session,
            "signal_redelivered",
            signal_id=str(message.kwargs.get("signal_id")),
            account=str(message.kwargs.get("exchange")),
            symbol=str(message.kwargs.get("symbol")),
            payload={"task_id": message.task_id, "sends": signal.sends + 1},
        )
    logger.warning(
        "recovery: signal %s (task %s) never reached a worker; sent again",
        message.kwargs.get("signal_id"),
        message.task_id,
    )


def _expire(
    message: OutboxMessage, signal: OutboxSignal, now: datetime, settings: Settings
) -> None:
    age_s = (now - signal.created_at).total_seconds()
    reason = (
        f"never reached a worker in {age_s:.0f}s ({signal.sends} send(s)); past "
        "EXECQ_RECOVERY_RESUBMIT_MAX_AGE_S, so not sent again and nothing reached the exchange"
    )
    signal_id = str(message.kwargs.get("signal_id"))
    with session_scope() as session:
        mark_expired(session, message.task_id, now)
        record_event(
            session,
            "signal_rejected",
            signal_id=signal_id[:256],
            account=str(message.kwargs.get("exchange"))[:32],
            symbol=str(message.kwargs.get("symbol"))[:64],
            payload={"field": "delivery", "reason": reason, "task_id": message.task_id},
        )
        raise_alert(
            session,
            "signal_undelivered",
            f"signal {signal_id}: {reason}",
            payload={"task_id": message.task_id, "max_age_s": settings.recovery_resubmit_max_age_s},
        )


# --- 1. orders in doubt -------------------------------------------------------------------


def _stuck_orders(before: datetime) -> list[OrderSnapshot]:
    with session_scope() as session:
        rows = session.scalars(
            select(Order)
            .where(
                Order.status.in_([status.value for status in IN_FLIGHT]),
                Order.updated_at < before,
            )
            .order_by(Order.id)
            .limit(500)
        ).all()
        return [OrderSnapshot.of(row) for row in rows]


def _resolve_stuck(order: OrderSnapshot, settings: Settings, now: datetime) -> str:
    lock = try_lock(redis_keys.order_lock(order.client_order_id), settings.order_lock_ttl_s)
    if lock is None:
        return "orders_busy"  # a task is working on it right now
    try:
        if order.status in RESTING:
            _reenqueue(order)
            return "resting_reenqueued"
        seen = None
        if order.status in IN_DOUBT:
            try:
                seen = exchange_orders.find_order_by_client_id(
                    gateway.get_client(order.account), order.symbol, order.client_order_id
                )
            except EXCHANGE_ERRORS as exc:
                logger.info("recovery lookup %s: %s", order.client_order_id, describe_error(exc))
                return "lookups_failed"
        if seen is not None:
            return _adopt_found(order, seen)
        if order.status in IN_DOUBT and now < visibility_deadline(order, settings):
            return "orders_in_visibility_window"
        return _absent(order, settings, now)
    finally:
        lock.release()


def _adopt_found(order: OrderSnapshot, seen: exchange_orders.ExchangeOrder) -> str:
    status = status_from_exchange(seen.status, seen.amount or order.amount, seen.filled)
    fields: dict[str, Any] = {"exchange_order_id": str(seen.id) if seen.id else None}
    if seen.filled is not None:
        fields["filled"] = seen.filled
    if seen.average is not None and seen.filled:
        fields["average_price"] = seen.average
    if order.acked_at is None:
        fields["acked_at"] = datetime.now(UTC)
    adopted = order_store.transition(
        order.client_order_id, status or OrderStatus.OPEN, payload={"source": "recovery"}, **fields
    )
    if adopted.status in TERMINAL:
        app.send_task("verify_position", kwargs={"client_order_id": order.client_order_id})
    else:
        _reenqueue(adopted)
    return "orders_adopted"


def _leg_still_wanted(order: OrderSnapshot, settings: Settings, now: datetime) -> str | None:
    """None when the leg should still happen, else why not."""
    if not order.reduce_only and kill_switch_state().on:
        return "kill switch on"
    age_s = (now - order.created_at).total_seconds()
    if age_s > settings.recovery_resubmit_max_age_s:
        return f"signal is {age_s:.0f}s old, past EXECQ_RECOVERY_RESUBMIT_MAX_AGE_S"
    return None


def _absent(order: OrderSnapshot, settings: Settings, now: datetime) -> str:
    why_not = _leg_still_wanted(order, settings, now)
    if why_not is None:
        _reenqueue(order)
        return "orders_reenqueued"
    order_store.transition(
        order.client_order_id,
        OrderStatus.REJECTED,
        payload={"reason": f"absent on the exchange; not resent: {why_not}", "source": "recovery"},
        last_error_class="recovery",
        last_error=f"absent on the exchange; not resent: {why_not}",
    )
    return "orders_rejected"


def _reenqueue(order: OrderSnapshot) -> None:
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
        app.send_task("execute_limit_order", kwargs=kwargs)
    else:
        app.send_task("execute_market_order", kwargs=kwargs)


# --- 2. fills not in the book -------------------------------------------------------------


def _unbooked_fills(before: datetime) -> list[str]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Order.client_order_id)
                .where(Order.filled > Order.booked_filled, Order.updated_at < before)
                .limit(500)
            )
        )


# --- 3. positions -------------------------------------------------------------------------


def _busy_symbols(before: datetime) -> set[tuple[str, str]]:
    """Symbols whose book may lag the exchange right now: leave them for the next sweep."""
    with session_scope() as session:
        rows = session.execute(
            select(Order.account, Order.symbol).where(
                or_(
                    Order.status.in_([status.value for status in IN_FLIGHT]),
                    Order.filled > Order.booked_filled,
                    Order.updated_at >= before,
                )
            )
        ).all()
    return {(account, symbol) for account, symbol in rows}


def _reconcile_account(
    account: str,
    positions: list,
    settings: Settings,
    busy: set[tuple[str, str]],
    now: datetime,
) -> Counter[str]:
    counts: Counter[str] = Counter()
    on_exchange = [
        rules.ExchangePosition(account, p.symbol, p.size, p.entry_price or None) for p in positions
    ]
    with session_scope() as session:
        book_rows = session.scalars(
            select(Position).where(
                Position.account == account, Position.status.in_(status_values(HELD))
            )
        ).all()
        book = [
            rules.BookPosition(
                account=row.account,
                symbol=row.symbol,
                size=row.size if row.side == "long" else -row.size,
                entry_price=row.entry_price,
                id=row.id,
            )
            for row in book_rows
        ]
    actions = rules.reconcile(book, on_exchange, settings.conflict_tolerance_percent)
    for action in actions:
        symbol = _action_symbol(action)
        if (account, symbol) in busy or lock_holder_exists(
            redis_keys.position_lock(account, symbol)
        ):
            counts["positions_skipped_busy"] += 1
            continue
        counts[_apply(action, now)] += 1
    counts["positions_checked"] += len(book) + len(on_exchange)
    return counts


def _action_symbol(action: Any) -> str:
    if isinstance(action, rules.Adopt):
        return action.exchange_position.symbol
    if isinstance(action, rules.Correct):
        return action.book.symbol
    return action.book.symbol


def _apply(action: Any, now: datetime) -> str:
    with session_scope() as session:
        if isinstance(action, rules.Adopt):
            found = action.exchange_position
            if lock_open_position(session, found.account, found.symbol) is not None:
                return "positions_booked_meanwhile"  # a fill was booked since the read
            if not found.entry_price:
                record_event(
                    session,
                    "orphan_not_adopted",
                    account=found.account,
                    symbol=found.symbol,
                    payload={
                        "size": str(found.size),
                        "reason": "the exchange reports no entry price",
                    },
                )
                return "orphans_without_entry"
            position_id = open_new_position(
                session,
                account=found.account,
                symbol=found.symbol,
                size=found.size,
                entry_price=found.entry_price,
                opened_at=now,
                opening_order=None,
                verification="verified",
            )
            record_event(
                session,
                "orphan_adopted",
                position_id=position_id,
                account=found.account,
                symbol=found.symbol,
                payload={"size": str(found.size), "entry_price": str(found.entry_price)},
            )
            raise_alert(
                session,
                "orphan_adopted",
                f"position on {found.account} {found.symbol} ({found.size}) was not in the book; "
                "adopted",
                severity="warning",
                account=found.account,
                symbol=found.symbol,
                position_id=position_id,
            )
            return "orphans_adopted"
        position = session.scalars(
            select(Position).where(Position.id == action.book.id).with_for_update()
        ).one()
        if position.status not in HELD:
            return "positions_already_closed"
        if isinstance(action, rules.Correct):
            found = action.exchange
            record_event(
                session,
                "position_conflict",
                position_id=position.id,
                account=position.account,
                symbol=position.symbol,
                payload={
                    "book_size": str(action.book.size),
                    "exchange_size": str(found.size),
                    "book_entry": str(action.book.entry_price),
                    "exchange_entry": str(found.entry_price),
                    "fields": list(action.fields),
                },
            )
            correct_position(
                session,
                position.id,
                size=found.size,
                # None or 0: the exchange did not say; the book's entry stays.
                entry_price=found.entry_price or None,
                now=now,
                verification="verified",
            )
            return "conflicts_corrected"
        close_position(
            session,
            position.id,
            position.account,
            position.symbol,
            reason="closed_externally",
            realized_pnl=position.realized_pnl,
            now=now,
            order=None,
        )
        return "closed_externally"


# --- 4. aged closes whose task is gone ------------------------------------------------------


def _reenqueue_aged_closes(before: datetime) -> int:
    with session_scope() as session:
        rows = session.execute(
            select(AgedPosition.id, Position.account, Position.symbol)
            .join(Position, Position.id == AgedPosition.position_id)
            .where(
                AgedPosition.status == AgedStatus.CLOSING.value, AgedPosition.updated_at < before
            )
        ).all()
    count = 0
    for aged_id, account, symbol in rows:
        if lock_holder_exists(redis_keys.position_lock(account, symbol)):
            continue
        app.send_task("close_aged_position", kwargs={"aged_id": aged_id})
        count += 1
    return count
