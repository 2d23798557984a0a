"""Cancelling orders: one of execq's orders, or every open order of an account.

A cancel of one order runs under the order's lease, like a create, and asks the
lifecycle core (``workers.execution.lifecycle.decide_cancel``) what each answer
means: an order never sent is canceled at once; an order in doubt is looked up
first; a resting one is canceled on the exchange; a cancel the exchange refuses
because the order is no longer open (it filled meanwhile) is followed by a
lookup, so its fill is recorded and booked, never lost. Cancelling twice is
harmless: the second finds the order terminal.

Open orders on the exchange that execq did not place (no order row with their
client id) are canceled by exchange id and recorded as events.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from workers.exchange import gateway
from workers.exchange.errors import NotSent, OrderNotFound, VenueError
from workers.exchange.reads import read_with_retries
from workers.exchange.venues.base import ExchangeOrder
from workers.execution import lifecycle
from workers.execution.retry import RetryClass, RetryPolicies
from workers.flows.submission import Submission, order_lease
from workers.flows.tracking import finish
from workers.retrying import call_with_retries
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.db import session_scope
from workers.store.events import record_event
from workers.store.orders import OrderSnapshot

logger = logging.getLogger("execq.cancel")

# A cancel answered while the order still shows working is sent again at most this often.
MAX_CANCELS = 3


class NoSuchOrder(LookupError):
    """execq has no order with that client order id."""


def cancel_order(client_order_id: str, settings: Settings, deadline: float) -> OrderSnapshot:
    """Cancel one of execq's orders; the order as it ended up (raises ``Requeue`` when
    another run holds it, ``NoSuchOrder`` for an unknown id)."""
    with order_lease(client_order_id, settings, deadline) as lease:
        order = order_store.load_order(client_order_id)
        if order is None:
            raise NoSuchOrder(f"no order with client order id {client_order_id}")
        run = Submission(order=order, settings=settings, deadline=deadline, lease=lease)
        observed: lifecycle.Observation | None = None
        cancels = 0
        while True:
            step = lifecycle.decide_cancel(run.facts(), observed)
            match step:
                case lifecycle.Done():
                    return run.order
                case lifecycle.Adopt(status=status, seen=seen):
                    adopted = run.adopt(status, seen, source="cancel")
                    finish(adopted)
                    return adopted
                case lifecycle.LookUp():
                    observed = _look(run)
                case lifecycle.SendCancel():
                    if cancels >= MAX_CANCELS:
                        order_store.record_order_event(
                            client_order_id,
                            "order_cancel_unconfirmed",
                            {"cancels": cancels, "status": str(run.order.status)},
                        )
                        return run.order
                    cancels += 1
                    observed = _send_cancel(run)
                case _:
                    return run.order


def _send_cancel(run: Submission) -> lifecycle.Observation:
    order = run.order
    policies = RetryPolicies.from_settings(run.settings.retry)
    try:
        answer = call_with_retries(
            lambda: run.venue.cancel_order(
                order.symbol,
                exchange_order_id=order.exchange_order_id,
                client_order_id=order.client_order_id,
            ),
            policies=policies,
            deadline=run.deadline,
            # A cancel is idempotent: anything that may pass is asked again.
            retry_if=lambda exc: (
                isinstance(exc, VenueError) and exc.retry_class is not RetryClass.PERMANENT
            ),
            mutating=False,
        )
    except OrderNotFound as exc:
        order_store.record_order_event(
            order.client_order_id, "order_cancel_refused", {"error": exc.describe()}
        )
        return lifecycle.Refused("not_open", exc.describe())
    except NotSent as exc:
        return lifecycle.NotExecuted(exc.retry_class, exc.describe())
    except VenueError as exc:
        order_store.record_order_event(
            order.client_order_id, "order_cancel_failed", {"error": exc.describe()}
        )
        return lifecycle.MayHaveExecuted(exc.describe())
    order_store.record_order_event(order.client_order_id, "order_cancel_sent", {})
    return lifecycle.Seen(answer, "cancel")


def _look(run: Submission) -> lifecycle.Observation:
    """The order as the exchange shows it now (in doubt: over the visibility window)."""
    if run.possibly_sent and run.order.exchange_order_id is None:
        return run.look_up()
    try:
        seen = run.venue.fetch_order(
            run.order.symbol,
            exchange_order_id=run.order.exchange_order_id,
            client_order_id=run.order.client_order_id,
        )
    except VenueError as exc:
        logger.info("cancel %s: lookup failed: %s", run.order.client_order_id, exc.describe())
        return lifecycle.NotSeen()
    return lifecycle.NotSeen() if seen is None else lifecycle.Seen(seen, "cancel+lookup")


@dataclass(frozen=True)
class Canceled:
    """One order a bulk cancel dealt with."""

    account: str
    symbol: str | None
    client_order_id: str | None
    exchange_order_id: str | None
    status: str
    ours: bool
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def cancel_open_orders(
    account: str,
    settings: Settings,
    *,
    symbol: str | None = None,
    keep_reduce_only: bool = False,
) -> list[Canceled]:
    """Cancel every open order of ``account`` (of ``symbol`` only, when given) on the
    exchange, execq's own and others; ``keep_reduce_only`` leaves reduce-only ones."""
    venue = gateway.venue(account)
    open_orders = read_with_retries(lambda: venue.open_orders(symbol))
    # execq's orders by the id the exchange knows them by.
    ours = {
        venue.client_id_for(order.client_order_id): order
        for order in order_store.unfinished_orders(account, symbol)
    }
    results: list[Canceled] = []
    for seen in open_orders:
        if keep_reduce_only and seen.reduce_only:
            continue
        mine = ours.get(seen.client_order_id) if seen.client_order_id else None
        results.append(_cancel_seen(account, seen, mine, settings))
    return results


def _cancel_seen(
    account: str, seen: ExchangeOrder, ours: OrderSnapshot | None, settings: Settings
) -> Canceled:
    deadline = time.monotonic() + settings.run_budget_s
    try:
        if ours is not None:
            ended = cancel_order(ours.client_order_id, settings, deadline)
            return Canceled(
                account,
                seen.symbol,
                ours.client_order_id,
                ended.exchange_order_id,
                str(ended.status),
                ours=True,
            )
        answer = gateway.venue(account).cancel_order(
            seen.symbol or "", exchange_order_id=seen.id, client_order_id=None
        )
    except VenueError as exc:
        return Canceled(
            account,
            seen.symbol,
            seen.client_order_id,
            seen.id,
            "error",
            ours=ours is not None,
            error=exc.describe(),
        )
    with session_scope() as session:
        record_event(
            session,
            "order_canceled_foreign",
            account=account,
            symbol=seen.symbol,
            payload={
                "exchange_order_id": seen.id,
                "client_order_id": seen.client_order_id,
                "answer": answer.status,
            },
        )
    return Canceled(account, seen.symbol, seen.client_order_id, seen.id, "canceled", ours=False)
