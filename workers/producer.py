"""The producer API: enqueue orders by task name from any process.

Only the task names and JSON arguments cross the broker, so a producer needs
neither ccxt nor the database — ``send_task`` with these kwargs from any
Celery client works the same::

    app.send_task("execute_market_order", kwargs={
        "signal_id": "bot7-2026-11-21T18:00:00Z-eth", "exchange": "binance",
        "symbol": "ETH/USDT:USDT", "side": "buy", "amount": "0.3",
        "reduce_only": False, "purpose": "open",
    })
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from celery.result import AsyncResult

from workers.app import app


def _kwargs(
    signal_id: str,
    exchange: str,
    symbol: str,
    side: str,
    amount: Decimal | str,
    *,
    reduce_only: bool,
    purpose: str,
    leg: str | None,
    position_id: int | None,
    metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "signal_id": signal_id,
        "exchange": exchange,
        "symbol": symbol,
        "side": side,
        "amount": str(amount),
        "reduce_only": reduce_only,
        "purpose": purpose,
        # Enqueue time lets the worker measure enqueue -> exchange ack.
        "metadata": {**(metadata or {}), "enqueued_at_ms": round(time.time() * 1000, 3)},
    }
    if leg is not None:
        kwargs["leg"] = leg
    if position_id is not None:
        kwargs["position_id"] = position_id
    return kwargs


def submit_market_order(
    signal_id: str,
    exchange: str,
    symbol: str,
    side: str,
    amount: Decimal | str,
    *,
    reduce_only: bool = False,
    purpose: str = "open",
    leg: str | None = None,
    position_id: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> AsyncResult:
    """Enqueue one market order; the returned result resolves to the order summary."""
    kwargs = _kwargs(
        signal_id,
        exchange,
        symbol,
        side,
        amount,
        reduce_only=reduce_only,
        purpose=purpose,
        leg=leg,
        position_id=position_id,
        metadata=metadata,
    )
    return app.send_task("execute_market_order", kwargs=kwargs)


def submit_limit_order(
    signal_id: str,
    exchange: str,
    symbol: str,
    side: str,
    amount: Decimal | str,
    price: Decimal | str,
    *,
    time_in_force: str = "GTC",
    reduce_only: bool = False,
    purpose: str = "open",
    leg: str | None = None,
    position_id: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> AsyncResult:
    """Enqueue one limit order (GTC or IOC); the result resolves to the order summary."""
    kwargs = _kwargs(
        signal_id,
        exchange,
        symbol,
        side,
        amount,
        reduce_only=reduce_only,
        purpose=purpose,
        leg=leg,
        position_id=position_id,
        metadata=metadata,
    )
    kwargs.update(price=str(price), time_in_force=time_in_force)
    return app.send_task("execute_limit_order", kwargs=kwargs)
