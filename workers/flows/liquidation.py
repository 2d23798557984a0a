"""Emergency liquidation: kill switch on, open orders canceled, every position closed
reduce-only, verified flat.

First every open order that is not reduce-only is canceled on every account
(execq's own and any other), and the open orders are read again until none
remains: a resting order left working would fill after the liquidation and open
a new position. Then the positions are closed.

Closes run in parallel across symbols (threads in one task; the shared rate
limiter keeps them within the exchange's budget) and go through the same
exactly-once submission as every order: each close has a deterministic
client order id from the liquidation's id and the position, so a redelivered
liquidation continues its closes instead of sending them again. A Redis lock
makes a second concurrent liquidation wait for the first; reduce-only
orders are the exchange-side guard against ever opening anything.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from workers import redis_keys
from workers.coordination import held_lock, set_kill_switch
from workers.exchange import gateway
from workers.exchange.errors import VenueError
from workers.exchange.positions import ExchangePosition, fetch_positions
from workers.exchange.reads import read_with_retries
from workers.execution.client_ids import client_order_id
from workers.execution.order_state import OrderStatus
from workers.flows.cancel import Canceled, cancel_open_orders
from workers.flows.submission import Requeue, Submission
from workers.flows.verification import check_flat, verify_and_book
from workers.retrying import pause, read_retry_if
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.db import session_scope
from workers.store.events import record_event
from workers.store.orders import OrderSnapshot

logger = logging.getLogger("execq.liquidation")

MAX_PARALLEL_CLOSES = 16


@dataclass(frozen=True)
class CloseResult:
    account: str
    symbol: str
    size: Decimal
    closed: bool
    status: str
    error: str | None = None


def liquidate_all(liquidation_id: str, reason: str, settings: Settings) -> dict[str, Any]:
    """Close every open position on every account. Raises LockNotAcquired if one is running."""
    with held_lock(redis_keys.liquidation_lock(), settings.task_hard_time_limit_s * 4):
        set_kill_switch(
            True,
            f"liquidation: {reason}",
            set_by=f"liquidation {liquidation_id}",
            payload={"liquidation_id": liquidation_id},
        )
        started = time.monotonic()
        with session_scope() as session:
            record_event(
                session,
                "liquidation_started",
                payload={"reason": reason, "liquidation_id": liquidation_id},
            )
        canceled, still_open = _cancel_opening_orders(settings)
        positions: list[ExchangePosition] = []
        unreachable: list[str] = []
        for account in settings.accounts:
            try:
                positions.extend(fetch_positions(account.name))
            except VenueError as exc:
                unreachable.append(account.name)
                logger.error("liquidation: positions on %s: %s", account.name, exc.describe())
        with ThreadPoolExecutor(max_workers=MAX_PARALLEL_CLOSES) as pool:
            results = list(pool.map(lambda p: _close_one(liquidation_id, p, settings), positions))
        summary = {
            "liquidation_id": liquidation_id,
            "reason": reason,
            "total": len(results),
            "closed": sum(1 for r in results if r.closed),
            "failed": sum(1 for r in results if not r.closed),
            "unreachable_accounts": unreachable,
            "orders_canceled": [result.as_dict() for result in canceled],
            "orders_still_open": still_open,
            "seconds": round(time.monotonic() - started, 3),
            "positions": [
                {
                    "account": r.account,
                    "symbol": r.symbol,
                    "size": str(r.size),
                    "closed": r.closed,
                    "status": r.status,
                    "error": r.error,
                }
                for r in results
            ],
            "kill_switch": "on",
        }
        with session_scope() as session:
            record_event(session, "liquidation_summary", payload=summary)
        return summary


# A close refused for a reason that may pass (retries of one class exhausted) is
# tried again as a new leg; a liquidation must not stop at the first bad streak.
MAX_CLOSE_LEGS = 5


def _close_one(liquidation_id: str, position: ExchangePosition, settings: Settings) -> CloseResult:
    signal_id = f"liq-{liquidation_id}-{position.account}-{position.symbol}"
    deadline = time.monotonic() + settings.task_soft_time_limit_s * 2
    size = position.size
    order: OrderSnapshot | None = None
    try:
        for leg_number in range(1, MAX_CLOSE_LEGS + 1):
            if leg_number > 1:
                try:
                    size = _exchange_size(position.account, position.symbol)
                except VenueError as exc:
                    if not read_retry_if(exc):
                        raise
                    # A read that may pass costs this leg, not the position's liquidation.
                    logger.warning(
                        "liquidation %s: size of %s %s: %s",
                        liquidation_id,
                        position.account,
                        position.symbol,
                        exc.describe(),
                    )
                    continue
                if size == 0:
                    break
            order = _submit_close(
                liquidation_id, signal_id, leg_number, position, size, settings, deadline
            )
            if order.filled > 0:
                # Every filled order is verified; the verified fill is booked.
                verify_and_book(order.client_order_id, settings, order=order)
            if order.status == OrderStatus.FILLED or order.last_error_class == "permanent":
                break
        flat = check_flat(
            position.account,
            position.symbol,
            settings,
            context=f"liquidation {liquidation_id}",
        )
        return CloseResult(
            position.account,
            position.symbol,
            position.size,
            closed=flat.flat,
            status=str(order.status) if order else "flat",
            error=None if flat.flat or order is None else order.last_error,
        )
    except (VenueError, Requeue) as exc:
        return CloseResult(
            position.account,
            position.symbol,
            position.size,
            closed=False,
            status="error",
            error=exc.describe()
            if isinstance(exc, VenueError)
            else f"gave up waiting: {exc.reason}",
        )


def _exchange_size(account: str, symbol: str) -> Decimal:
    return sum(
        (p.size for p in fetch_positions(account, [symbol]) if p.symbol == symbol), Decimal(0)
    )


def _submit_close(
    liquidation_id: str,
    signal_id: str,
    leg_number: int,
    position: ExchangePosition,
    size: Decimal,
    settings: Settings,
    deadline: float,
) -> OrderSnapshot:
    leg = "liq" if leg_number == 1 else f"liq{leg_number}"
    cid = client_order_id(signal_id, leg)
    order, _ = order_store.ensure_intent(
        {
            "client_order_id": cid,
            "signal_id": signal_id,
            "leg": leg,
            "account": position.account,
            "symbol": position.symbol,
            "side": "sell" if size > 0 else "buy",
            "order_type": "market",
            "time_in_force": None,
            "amount": abs(size),
            "price": None,
            "reduce_only": True,
            "purpose": "liquidation",
            "position_id": None,
            "aged_id": None,
            "metadata_": {"liquidation_id": liquidation_id},
        }
    )
    while True:
        try:
            return Submission(order=order, settings=settings, deadline=deadline).run()
        except Requeue as requeue:
            # A liquidation waits here rather than requeue: the summary needs the outcome.
            pause(requeue.countdown_s, deadline=deadline, reason=requeue.reason)
            order = order_store.load_order(cid) or order


# Reads of the open orders after the cancels, until none that could open remains.
OPEN_ORDER_CHECKS = 3


def _cancel_opening_orders(settings: Settings) -> tuple[list[Canceled], list[str]]:
    """Cancel every open order that is not reduce-only on every account, then read the
    open orders again until none remains; returns the cancels and what is still open."""
    canceled: list[Canceled] = []
    still_open: list[str] = []
    for account in settings.accounts:
        for _ in range(OPEN_ORDER_CHECKS):
            try:
                results = cancel_open_orders(account.name, settings, keep_reduce_only=True)
                remaining = [
                    order
                    for order in read_with_retries(
                        lambda a=account.name: gateway.venue(a).open_orders()
                    )
                    if not order.reduce_only
                ]
            except VenueError as exc:
                logger.error("liquidation: open orders on %s: %s", account.name, exc.describe())
                remaining = None
                results = []
            canceled.extend(results)
            if remaining == []:
                break
        else:
            still_open.append(account.name)
    with session_scope() as session:
        record_event(
            session,
            "liquidation_orders_canceled",
            payload={
                "canceled": [result.as_dict() for result in canceled],
                "accounts_with_open_orders": still_open,
            },
        )
    return canceled, still_open


def new_liquidation_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
