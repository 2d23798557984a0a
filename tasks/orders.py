"""execute_market_order / execute_limit_order: validate, record the intent, submit once.

Arguments are JSON, by name (what the producer sent is what Flower shows); the
schema is ``workers.execution.signal`` (``MarketOrderArguments``,
``LimitOrderArguments``), which also writes these tasks' docstrings and the
README's table. The result is the order result (``OrderResult``).

A refused signal (an invalid argument, a symbol the account does not trade, an
amount off the market's limits, a signal id already used for another order)
records ``signal_rejected`` or ``signal_conflict`` and fails the task with the
one-line reason; nothing reaches the exchange and nothing is retried. The tasks
take ``**arguments`` so that a missing or unknown argument, which Celery would
refuse with a ``TypeError`` before any execq code ran, is refused the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workers.app import RETRY_ON_INFRASTRUCTURE, app
from workers.coordination import SendGuard, queue_send_guard_read, send_guard, send_guard_from
from workers.exchange.errors import VenueError
from workers.exchange.markets import signal_market
from workers.exchange.prices import (
    ReferencePrice,
    queue_cached_price_read,
    reference_price,
    refresh_reference_price,
)
from workers.execution.client_ids import client_order_id
from workers.execution.order_state import OrderStatus
from workers.execution.signal import (
    LIMIT_TASK,
    MARKET_TASK,
    BaseOrderArguments,
    LimitOrderArguments,
    MarketOrderArguments,
    SignalLimits,
    SignalRefused,
    SignalRejected,
    arguments_for_task,
    conflict,
    order_terms,
    task_docstring,
)
from workers.execution.validation import ValidatedOrder, check_against_market, check_notional
from workers.flows.submission import LeaseLost, Requeue, Submission, order_lease
from workers.flows.verification import InlineSettlement, decisive_order, verify_and_book
from workers.redis_client import get_redis
from workers.settings import get_settings
from workers.store import orders as order_store
from workers.store.orders import OrderSnapshot
from workers.store.signals import missing_references, record_refusal, refusal_event

MAX_REQUEUES = 50

logger = logging.getLogger("execq.orders")

__all__ = ["SignalRejected", "execute_limit_order", "execute_market_order"]


def _documented_by(model: type[BaseOrderArguments], summary: str):
    """Give the task the docstring its argument model writes (Flower and ``help()`` show it)."""

    def document(function):
        function.__doc__ = task_docstring(model, summary)
        return function

    return document


@app.task(
    name=MARKET_TASK,
    bind=True,
    typing=False,
    throws=(SignalRefused,),
    max_retries=MAX_REQUEUES,
    **RETRY_ON_INFRASTRUCTURE,
)
@_documented_by(MarketOrderArguments, "One market order, exactly once; returns the order result.")
def execute_market_order(self: Any, *args: Any, **arguments: Any) -> dict[str, Any]:
    return _execute(self, SignalRequest.of(self, MARKET_TASK, args, arguments))


@app.task(
    name=LIMIT_TASK,
    bind=True,
    typing=False,
    throws=(SignalRefused,),
    max_retries=MAX_REQUEUES,
    **RETRY_ON_INFRASTRUCTURE,
)
@_documented_by(
    LimitOrderArguments,
    "One limit order (GTC rests and is followed; IOC fills what it can), exactly once.",
)
def execute_limit_order(self: Any, *args: Any, **arguments: Any) -> dict[str, Any]:
    return _execute(self, SignalRequest.of(self, LIMIT_TASK, args, arguments))


@dataclass(frozen=True)
class SignalRequest:
    """A task message as it arrived: not validated yet."""

    task_name: str
    task_id: str | None
    args: Sequence[Any]
    kwargs: Mapping[str, Any]

    @classmethod
    def of(
        cls, task: Any, task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> SignalRequest:
        return cls(task_name, task.request.id, tuple(args), dict(kwargs))


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
    # The kill switch and the account's standing, read with the reference price (one
    # round trip); the first send uses them.
    guard: SendGuard | None = None

    @property
    def client_order_id(self) -> str:
        return client_order_id(self.order.signal_id, self.leg)


def _execute(task: Any, request: SignalRequest) -> dict[str, Any]:
    settings = get_settings()
    deadline = time.monotonic() + settings.run_budget_s
    try:
        intent = _validate_or_reject(request)
    except VenueError as exc:
        # Markets or the reference price could not be read: nothing was sent, try later.
        if task.request.retries >= MAX_REQUEUES:
            unreachable = f"exchange unreachable: {exc.describe()}"
            raise _refused(request, SignalRejected.of("exchange", unreachable)) from None
        raise task.retry(countdown=1.0 + task.request.retries) from None
    cid = intent.client_order_id
    # Read with the reference price (market orders), it serves the first send.
    guard = intent.guard
    settlement = InlineSettlement()
    try:
        with order_lease(cid, settings, deadline) as lease:
            may_send = intent.order.reduce_only or (
                guard is not None and not guard.kill_switch.on and guard.account_refused is None
            )
            order, created = order_store.ensure_intent(
                _intent_values(intent) | {"task_id": task.request.id}, submitting=may_send
            )
            if not created:
                _refuse_another_order(request, intent, order)
            order = Submission(
                order=order,
                settings=settings,
                deadline=deadline,
                fresh=created and may_send,
                lease=lease,
                guard=guard if created else None,
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


def _validate_or_reject(request: SignalRequest) -> OrderIntent:
    """The static checks, then the market's; a refusal is recorded and raised.

    Raises the exchange's errors when the markets or a reference price cannot be
    read (nothing is decided then).
    """
    try:
        arguments = arguments_for_task(
            request.task_name, request.args, request.kwargs, SignalLimits.of(get_settings())
        )
    except SignalRejected as refusal:
        raise _refused(request, _with_market_hint(request, refusal)) from None
    reference = guard = None
    try:
        rules = signal_market(arguments.exchange, arguments.symbol)
        validated = check_against_market(arguments, rules)
        for name in missing_references(arguments.position_id, arguments.aged_id):
            raise SignalRejected.of(name, f"no row with id {getattr(arguments, name)}")
        if validated.order_type == "market":
            reference, guard = _price_and_send_guard(validated.account, validated.symbol)
        check_notional(validated, rules, reference.price if reference is not None else None)
    except SignalRejected as refusal:
        raise _refused(request, refusal) from None
    return OrderIntent(
        order=validated,
        leg=arguments.effective_leg,
        purpose=arguments.purpose,
        position_id=arguments.position_id,
        aged_id=arguments.aged_id,
        refresh_price=reference is not None and reference.stale,
        guard=guard,
    )


def _with_market_hint(request: SignalRequest, refusal: SignalRejected) -> SignalRejected:
    """A refused symbol of a known account, named against the account's markets: the
    symbol an alias stands for there, or that it has no such market."""
    account, symbol = request.kwargs.get("exchange"), request.kwargs.get("symbol")
    if refusal.field != "symbol" or not isinstance(symbol, str):
        return refusal
    if len(symbol) > 64 or not symbol.isprintable():
        return refusal
    if account not in {known.name for known in get_settings().accounts}:
        return refusal
    try:
        signal_market(account, symbol)
    except SignalRejected as named:
        return named
    except VenueError as exc:
        logger.info("markets of %s not read for a refused symbol: %s", account, exc.describe())
    return refusal


def _price_and_send_guard(account: str, symbol: str) -> tuple[ReferencePrice, SendGuard]:
    """The market order's reference price and what may stop its send (the kill switch, a
    refused account), read in one round trip."""
    pipe = get_redis().pipeline(transaction=False)
    queue_cached_price_read(pipe, account, symbol)
    queue_send_guard_read(pipe, account)
    *price_replies, guard_replies = pipe.execute()
    reference = reference_price(account, symbol, price_replies)
    if reference.fetched:
        # A ticker request ran since the pipeline: read the guard as of now.
        return reference, send_guard(account)
    return reference, send_guard_from(*guard_replies)


def _refused(request: SignalRequest, refusal: SignalRefused) -> SignalRefused:
    """Record the refusal's event; returns it for the caller to raise (the task fails
    with its one line and is not retried)."""
    record_refusal(
        refusal_event(refusal, request.kwargs, task_name=request.task_name, task_id=request.task_id)
    )
    return refusal


def _refuse_another_order(
    request: SignalRequest, intent: OrderIntent, order: OrderSnapshot
) -> None:
    """The (signal id, leg) already names an order: carry on only if it is this one."""
    asked = order_terms(intent.order) | {"purpose": intent.purpose}
    refusal = conflict(intent.order.signal_id, intent.leg, order_terms(order), asked)
    if refusal is None:
        return
    row = refusal_event(
        refusal,
        request.kwargs,
        task_name=request.task_name,
        task_id=request.task_id,
        order_id=order.id,
        client_order_id=order.client_order_id,
    )
    record_refusal(row)
    raise refusal


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
        "requested_amount": order.requested_amount,
        "price": order.price,
        "reduce_only": order.reduce_only,
        "purpose": intent.purpose,
        "position_id": intent.position_id,
        "aged_id": intent.aged_id,
        "metadata_": order.metadata,
    }
