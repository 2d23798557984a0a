"""execute_market_order / execute_limit_order: validate, record the intent, submit once.

Arguments are JSON (what the producer sent is what Flower shows):
``signal_id``, ``exchange`` (a configured account), ``symbol`` (ccxt unified),
``side``, ``amount`` (decimal string), ``reduce_only``, ``purpose``, optional
``leg``, ``position_id``, ``aged_id``, ``metadata``; limit orders add
``price`` and ``time_in_force`` (GTC or IOC). The result is the order summary.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from workers import redis_keys
from workers.app import RETRY_ON_INFRASTRUCTURE, app
from workers.coordination import KillSwitchState, kill_switch_from, kill_switch_state
from workers.exchange.errors import VenueError
from workers.exchange.prices import (
    ReferencePrice,
    find_market,
    queue_cached_price_read,
    reference_price,
    refresh_reference_price,
)
from workers.execution.client_ids import client_order_id, leg_for
from workers.execution.order_state import OrderStatus
from workers.execution.validation import InvalidSignal, ValidatedOrder, validate_order_request
from workers.flows.submission import LeaseLost, Requeue, Submission, order_lease
from workers.flows.verification import InlineSettlement, decisive_order, verify_and_book
from workers.redis_client import get_redis
from workers.settings import get_settings
from workers.store import orders as order_store
from workers.store.db import session_scope
from workers.store.events import record_event

MAX_REQUEUES = 50

logger = logging.getLogger("execq.orders")


class SignalRejected(Exception):
    """The signal is invalid; nothing was sent to the exchange and nothing is retried."""


@app.task(
    name="execute_market_order", bind=True, max_retries=MAX_REQUEUES, **RETRY_ON_INFRASTRUCTURE
)
def execute_market_order(
    self: Any,
    signal_id: str,
    exchange: str,
    symbol: str,
    side: str,
    amount: str,
    reduce_only: bool = False,
    purpose: str = "open",
    leg: str | None = None,
    position_id: int | None = None,
    aged_id: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One market order, exactly once; returns the order summary."""
    request = _arguments(locals(), order_type="market", price=None, time_in_force=None)
    return _execute(self, request)


@app.task(
    name="execute_limit_order", bind=True, max_retries=MAX_REQUEUES, **RETRY_ON_INFRASTRUCTURE
)
def execute_limit_order(
    self: Any,
    signal_id: str,
    exchange: str,
    symbol: str,
    side: str,
    amount: str,
    price: str,
    time_in_force: str = "GTC",
    reduce_only: bool = False,
    purpose: str = "open",
    leg: str | None = None,
    position_id: int | None = None,
    aged_id: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One limit order (GTC rests and is followed; IOC fills what it can), exactly once."""
    return _execute(self, _arguments(locals(), order_type="limit"))


def _arguments(task_locals: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The task's JSON arguments as one request (the explicit signatures are what Flower shows)."""
    return {name: value for name, value in task_locals.items() if name != "self"} | extra


@dataclass(frozen=True)
class OrderIntent:
    """A validated order plus where it belongs (leg, purpose, position, aged episode)."""

    order: ValidatedOrder
    leg: str
    purpose: str
    position_id: int | None
    aged_id: int | None
    # The reference price used was stale: refresh it once this order's exchange call is done.
    refresh_price: bool = False
    # The kill switch, when it was read with the reference price (one round trip).
    kill_switch: KillSwitchState | None = None

    @property
    def client_order_id(self) -> str:
        return client_order_id(self.order.signal_id, self.leg)


def _execute(task: Any, request: dict[str, Any]) -> dict[str, Any]:
    settings = get_settings()
    deadline = time.monotonic() + settings.run_budget_s
    try:
        intent = _validate_or_reject(request)
    except VenueError as exc:
        # Markets or the reference price could not be read: nothing was sent, try later.
        if task.request.retries >= MAX_REQUEUES:
            _record_rejection(request, "exchange", f"exchange unreachable: {exc.describe()}")
            raise SignalRejected(f"signal rejected: exchange unreachable: {exc}") from None
        raise task.retry(countdown=1.0 + task.request.retries) from None
    cid = intent.client_order_id
    # The kill switch read with the reference price (market orders) serves the first send.
    kill_switch = intent.kill_switch
    settlement = InlineSettlement()
    try:
        with order_lease(cid, settings, deadline) as lease:
            may_send = intent.order.reduce_only or (kill_switch is not None and not kill_switch.on)
            order, created = order_store.ensure_intent(
                _intent_values(intent) | {"task_id": task.request.id}, submitting=may_send
            )
            order = Submission(
                order=order,
                settings=settings,
                deadline=deadline,
                fresh=created and may_send,
                lease=lease,
                kill_switch=kill_switch if created else None,
                on_terminal=settlement,
            ).run()
    except (Requeue, LeaseLost) as exc:
        countdown_s = exc.countdown_s if isinstance(exc, Requeue) else 1.0
        stored = order_store.load_order(cid)
        if stored is None:
            raise task.retry(countdown=max(0.1, countdown_s)) from None
        order_store.touch(cid)
        order_store.record_order_event(
            cid, "order_requeued", {"reason": str(exc), "countdown_s": countdown_s}
        )
        if task.request.retries >= MAX_REQUEUES:
            # The order is recorded; the tracking and recovery sweeps carry it on.
            return stored.summary()
        raise task.retry(countdown=max(0.1, countdown_s)) from None
    if settlement.settled:
        _check_flat_after(order, settlement.booking)
    elif order.terminal and order.status != OrderStatus.REJECTED:
        _verify(order, settings)
    if intent.refresh_price:
        _refresh_price(intent.order.account, intent.order.symbol)
    return order.summary()


def _refresh_price(account: str, symbol: str) -> None:
    """Refresh a stale reference price now that the order no longer waits for it.

    A failure only leaves the price stale (a later order tries again): it must
    not fail an order that is already done.
    """
    try:
        refresh_reference_price(account, symbol)
    except VenueError as exc:
        logger.info("reference price %s %s not refreshed: %s", account, symbol, exc.describe())


def _verify(order: Any, settings: Any) -> None:
    """Verify and book now when the order alone decides (no exchange call needed);
    otherwise hand it to ``verify_position``, which may spend its budget asking.

    Reached when this run did not settle the order as it became terminal
    (``InlineSettlement``): it was terminal before (a redelivery), another run
    moved it, or the order alone does not decide.
    """
    if not decisive_order(order):
        app.send_task("verify_position", kwargs={"client_order_id": order.client_order_id})
        return
    _, booking = verify_and_book(order.client_order_id, settings, order=order)
    _check_flat_after(order, booking)


def _check_flat_after(order: Any, booking: Any) -> None:
    """A fill that closed the position: check on the exchange that it really is flat."""
    if booking is not None and booking.closed_position_id is not None and booking.size_after == 0:
        app.send_task(
            "check_position_flat",
            kwargs={
                "account": order.account,
                "symbol": order.symbol,
                "position_id": booking.closed_position_id,
                "context": f"{order.purpose} {order.client_order_id}",
            },
        )


LEG = re.compile(r"^[a-z0-9]{1,12}$")


def _check_context(request: dict[str, Any]) -> tuple[str, str]:
    purpose = request["purpose"]
    if not isinstance(purpose, str) or not LEG.match(purpose.replace("_", "")):
        raise InvalidSignal("purpose", "must be a short lowercase word such as open or close")
    leg = leg_for(purpose, request["leg"])
    if not isinstance(leg, str) or not LEG.match(leg):
        raise InvalidSignal("leg", "must match [a-z0-9]{1,12}")
    for name in ("position_id", "aged_id"):
        value = request[name]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidSignal(name, "must be an integer id")
    return leg, purpose


def _validate_or_reject(request: dict[str, Any]) -> OrderIntent:
    settings = get_settings()
    account_names = [account.name for account in settings.accounts]
    market = None
    reference = None
    kill_switch = None
    try:
        leg, purpose = _check_context(request)
        if request["exchange"] in account_names and isinstance(request["symbol"], str):
            market = find_market(request["exchange"], request["symbol"])
            if market is not None and request["order_type"] == "market":
                reference, kill_switch = _price_and_kill_switch(
                    request["exchange"], request["symbol"]
                )
        validated = validate_order_request(
            signal_id=request["signal_id"],
            account=request["exchange"],
            known_accounts=account_names,
            symbol=request["symbol"],
            market=market,
            side=request["side"],
            amount=request["amount"],
            price=request["price"],
            order_type=request["order_type"],
            time_in_force=request["time_in_force"],
            reduce_only=request["reduce_only"],
            metadata=request["metadata"],
            max_signal_id_length=settings.max_signal_id_length,
            max_metadata_bytes=settings.max_metadata_bytes,
            reference_price=reference.price if reference is not None else None,
        )
    except InvalidSignal as invalid:
        _record_rejection(request, invalid.field, invalid.message)
        raise SignalRejected(f"signal rejected: {invalid.field}: {invalid.message}") from None
    return OrderIntent(
        order=validated,
        leg=leg,
        purpose=purpose,
        position_id=request["position_id"],
        aged_id=request["aged_id"],
        refresh_price=reference is not None and reference.stale,
        kill_switch=kill_switch,
    )


def _price_and_kill_switch(account: str, symbol: str) -> tuple[ReferencePrice, KillSwitchState]:
    """The market order's reference price and the kill switch, read in one round trip."""
    pipe = get_redis().pipeline(transaction=False)
    queue_cached_price_read(pipe, account, symbol)
    pipe.get(redis_keys.KILL_SWITCH)
    *price_replies, kill_switch_raw = pipe.execute()
    reference = reference_price(account, symbol, price_replies)
    if reference.fetched:
        # A ticker request ran since the pipeline: read the switch as of now.
        return reference, kill_switch_state()
    return reference, kill_switch_from(kill_switch_raw)


def _record_rejection(request: dict[str, Any], field: str, reason: str) -> None:
    with session_scope() as session:
        record_event(
            session,
            "signal_rejected",
            signal_id=str(request.get("signal_id"))[:256],
            account=str(request.get("exchange"))[:32],
            symbol=str(request.get("symbol"))[:64],
            payload={"field": field, "reason": reason},
        )


def _intent_values(intent: OrderIntent) -> dict[str, Any]:
    order = intent.order
    return {
        "client_order_id": intent.client_order_id,
        "signal_id": order.signal_id,
        "leg": intent.leg,
        "account": order.account,
        "symbol": order.symbol,
        "side": str(order.side),
        "order_type": str(order.order_type),
        "time_in_force": order.time_in_force,
        "amount": order.amount,
        "price": order.price,
        "reduce_only": order.reduce_only,
        "purpose": intent.purpose,
        "position_id": intent.position_id,
        "aged_id": intent.aged_id,
        "metadata_": order.metadata,
    }
