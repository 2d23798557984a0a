"""cancel_order: cancel one of execq's orders, or every open order of an account.

Arguments (JSON): ``client_order_id``, or ``signal_id`` with its ``leg``
(default ``open``), or ``exchange`` (an account) with an optional ``symbol``
for every open order there. The result is the order's summary, or for an
account ``{"canceled": [...]}``.
"""

from __future__ import annotations

import time
from typing import Any

from workers.app import RETRY_ON_INFRASTRUCTURE, app
from workers.execution.client_ids import client_order_id as derive_client_order_id
from workers.flows.cancel import NoSuchOrder, cancel_open_orders, cancel_order
from workers.flows.submission import Requeue
from workers.settings import get_settings


class CancelRefused(Exception):
    """The cancel names no order execq knows, or names none at all."""


@app.task(name="cancel_order", bind=True, max_retries=30, **RETRY_ON_INFRASTRUCTURE)
def cancel_order_task(
    self: Any,
    client_order_id: str | None = None,
    signal_id: str | None = None,
    leg: str = "open",
    exchange: str | None = None,
    symbol: str | None = None,
) -> dict[str, Any]:
    """Cancel an order (exactly once, like a create) or every open order of an account."""
    settings = get_settings()
    deadline = time.monotonic() + settings.run_budget_s
    try:
        if client_order_id is None and signal_id is not None:
            client_order_id = derive_client_order_id(signal_id, leg)
        if client_order_id is not None:
            return cancel_order(client_order_id, settings, deadline).summary()
        if exchange is None:
            raise CancelRefused("cancel_order needs client_order_id, signal_id or exchange")
        settings.account(exchange)
        results = cancel_open_orders(exchange, settings, symbol=symbol)
        return {"canceled": [result.as_dict() for result in results]}
    except (NoSuchOrder, KeyError, ValueError) as exc:
        raise CancelRefused(f"cancel refused: {exc}") from None
    except Requeue as requeue:
        raise self.retry(countdown=max(0.1, requeue.countdown_s)) from None
