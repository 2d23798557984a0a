"""The recovery sweep: find out what is true on the exchange and repair the record.

Runs every minute and once when a worker starts. Steps, each counted in one
``recovery_sweep`` event:

0. signals a producer recorded in the outbox (``workers.producer``) that
   never reached a worker and are no longer in the broker: sent again with
   the same task id, or, past the resubmit age, recorded as rejected with a
   critical alert (``workers.execution.outbox``);
1. orders no run is working on — resting, in doubt, never sent — are followed
   by the order tracker (``workers.flows.tracking``), as the lifecycle core
   decides;
2. fills not yet in the position book → ``verify_position`` again;
3. positions per account reconciled with ``fetch_positions``: orphan →
   adopted and alerted (or, when the exchange reports no entry price, left
   out with an ``orphan_not_adopted`` event: a book entry of 0 would make
   every PnL and aged target of it wrong); larger than the book → a critical
   alert naming the orders in doubt (corrected only when none explains it);
   smaller, or the entry off by more than 1 % → corrected (an entry the
   exchange does not report keeps the book's); flat on the exchange →
   ``closed_externally``. Symbols with orders in flight or fresh activity are
   skipped: their fills are not booked yet, and adopting them would book them
   twice. A successful read also lifts the refusal of an account whose key the
   exchange had refused;
4. aged closes marked ``closing`` whose task is gone → enqueued again.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from workers import redis_keys
from workers.app import app
from workers.coordination import account_works, lock_holder_exists
from workers.exchange.errors import VenueError
from workers.exchange.positions import HedgeModeUnsupported, fetch_positions
from workers.execution import reconcile as rules
from workers.execution.aged_state import AgedStatus
from workers.execution.order_state import IN_FLIGHT
from workers.execution.outbox import Delivery, OutboxSignal, delivery_verdict
from workers.execution.position_state import HELD, status_values
from workers.execution.signal import SHOWN_INPUT_CHARS, event_text
from workers.flows.tracking import track_orders
from workers.redis_client import get_redis
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.db import session_scope
from workers.store.events import raise_alert, record_event
from workers.store.models import AgedPosition, Alert, Order, Position, Signal
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
    close_externally,
    correct_position,
    lock_open_position,
    open_new_position,
)
from workers.store.signals import ACCOUNT_CHARS, SIGNAL_ID_CHARS, SYMBOL_CHARS

logger = logging.getLogger("execq.recovery")

# kombu's Redis transport keeps reserved (popped, not yet acknowledged) messages here.
UNACKED_KEY = "unacked"
BROKER_SCAN_CHUNK = 1000


def run_recovery(settings: Settings) -> dict[str, int]:
    counts: Counter[str] = Counter()
    now = datetime.now(UTC)
    stuck_before = now - timedelta(seconds=settings.recovery_stuck_after_s)
    counts.update(redeliver_lost_signals(settings, now))
    counts.update(track_orders(settings, now))
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
            if account_works(account.name):
                counts["accounts_restored"] += 1
        except HedgeModeUnsupported as exc:
            counts["hedge_mode_refused"] += 1
            with session_scope() as session:
                raise_alert(session, "hedge_mode_unsupported", str(exc), account=account.name)
        except VenueError as exc:
            counts["accounts_unreachable"] += 1
            logger.warning("recovery: positions on %s failed: %s", account.name, exc.describe())
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
            **_event_columns(message),
            payload={"task_id": message.task_id, "sends": signal.sends + 1},
        )
    logger.warning(
        "recovery: signal %s (task %s) never reached a worker; sent again",
        event_text(message.kwargs.get("signal_id"), SHOWN_INPUT_CHARS),
        message.task_id,
    )


def _event_columns(message: OutboxMessage) -> dict[str, str | None]:
    """The message's signal id, account and symbol as event columns hold them (escaped,
    cut to width): a recorded message is not necessarily a valid one."""
    return {
        "signal_id": event_text(message.kwargs.get("signal_id"), SIGNAL_ID_CHARS),
        "account": event_text(message.kwargs.get("exchange"), ACCOUNT_CHARS),
        "symbol": event_text(message.kwargs.get("symbol"), SYMBOL_CHARS),
    }


def _expire(
    message: OutboxMessage, signal: OutboxSignal, now: datetime, settings: Settings
) -> None:
    age_s = (now - signal.created_at).total_seconds()
    reason = (
        f"never reached a worker in {age_s:.0f}s ({signal.sends} send(s)); past "
        "EXECQ_RECOVERY_RESUBMIT_MAX_AGE_S, so not sent again and nothing reached the exchange"
    )
    columns = _event_columns(message)
    with session_scope() as session:
        mark_expired(session, message.task_id, now)
        record_event(
            session,
            "signal_rejected",
            **columns,
            payload={"field": "delivery", "reason": reason, "task_id": message.task_id},
        )
        raise_alert(
            session,
            "signal_undelivered",
            f"signal {event_text(columns['signal_id'], SHOWN_INPUT_CHARS)}: {reason}",
            payload={"task_id": message.task_id, "max_age_s": settings.recovery_resubmit_max_age_s},
        )


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
    """Symbols whose book may lag the exchange right now: leave them for the next sweep.

    An order whose outcome stays unknown past its visibility window (alerted) does not
    hold its symbol back: a position it may have opened is exactly what the check must
    report (``position_exceeds_book``).
    """
    with session_scope() as session:
        rows = session.execute(
            select(Order.account, Order.symbol).where(
                or_(
                    order_store.being_worked_on(),
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
        if isinstance(action, rules.ExceedsBook):
            return _exceeds_book(session, position, action, now)
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
        close_externally(session, position, now)
        return "closed_externally"


def _exceeds_book(
    session: Session, position: Position, action: rules.ExceedsBook, now: datetime
) -> str:
    """The exchange holds more than the book: a critical alert naming the orders that may
    explain it. The book is corrected only when none can: an order still in doubt is
    booked when it is found, and correcting now would book its fill twice."""
    found = action.exchange
    doubtful = session.execute(
        select(Order.client_order_id, Order.status)
        .where(
            Order.account == position.account,
            Order.symbol == position.symbol,
            Order.status.in_([status.value for status in IN_FLIGHT]),
        )
        .order_by(Order.id)
        .limit(20)
    ).all()
    orders = [f"{client_id} ({status})" for client_id, status in doubtful]
    payload = {
        "book_size": str(action.book.size),
        "exchange_size": str(found.size),
        "difference": str(action.difference),
        "orders_in_doubt": orders,
    }
    record_event(
        session,
        "position_conflict",
        position_id=position.id,
        account=position.account,
        symbol=position.symbol,
        payload=payload | {"exceeds_book": True},
    )
    if not _alerted_already(session, position, str(found.size)):
        cause = (
            f"orders in flight or unknown on it: {', '.join(orders)}"
            if orders
            else "no order of execq's explains it (placed outside execq?); book corrected"
        )
        raise_alert(
            session,
            "position_exceeds_book",
            f"{position.account} {position.symbol}: the exchange holds {found.size} where the "
            f"book has {action.book.size} ({action.difference:+} more); {cause}",
            account=position.account,
            symbol=position.symbol,
            position_id=position.id,
            payload=payload,
        )
    if doubtful:
        return "positions_exceeding_book"
    position.size = abs(found.size)
    position.side = "long" if found.size > 0 else "short"
    if found.entry_price:
        position.entry_price = found.entry_price
    position.updated_at = now
    return "positions_exceeding_book_corrected"


def _alerted_already(session: Session, position: Position, exchange_size: str) -> bool:
    """Whether this excess (same position, same exchange size) was alerted before."""
    return (
        session.scalar(
            select(Alert.id)
            .where(
                Alert.kind == "position_exceeds_book",
                Alert.position_id == position.id,
                Alert.payload["exchange_size"].astext == exchange_size,
            )
            .limit(1)
        )
        is not None
    )


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
