"""verify_position: is the position there, and how big? Then book it.

Chained after every order that may have filled (the order task enqueues it)
and callable on its own with a client order id. Books the verified fill into
the position book exactly once; after a fill that should leave the position
flat, checks that it really is.
"""

from __future__ import annotations

from typing import Any

from workers.app import RETRY_ON_INFRASTRUCTURE, app
from workers.flows.aged import close_aged
from workers.flows.submission import Requeue
from workers.flows.verification import check_flat, verify_and_book
from workers.settings import get_settings
from workers.store import orders as order_store


@app.task(name="verify_position", bind=True, max_retries=5, **RETRY_ON_INFRASTRUCTURE)
def verify_position(self: Any, client_order_id: str) -> dict[str, Any]:
    """Verify and book one order's position; after a closing fill, check that it is flat."""
    settings = get_settings()
    verification, booking = verify_and_book(client_order_id, settings)
    order = order_store.load_order(client_order_id)
    assert order is not None
    flat = None
    if booking is not None and booking.closed_position_id is not None and booking.size_after == 0:
        flat = check_flat(
            order.account,
            order.symbol,
            settings,
            position_id=booking.closed_position_id,
            context=f"{order.purpose} {client_order_id}",
        )
    return verification_summary(client_order_id, verification, booking, flat)


@app.task(name="check_position_flat", **RETRY_ON_INFRASTRUCTURE)
def check_position_flat(
    account: str, symbol: str, position_id: int | None, context: str
) -> dict[str, Any]:
    """After a close: is the position really gone (seed 004)? A residual is a critical alert."""
    report = check_flat(account, symbol, get_settings(), position_id=position_id, context=context)
    return {"flat": report.flat, "residual": str(report.residual), "checks": report.checks}


def verification_summary(
    client_order_id: str, verification: Any, booking: Any, flat: Any
) -> dict[str, Any]:
    result = verification.result
    return {
        "client_order_id": client_order_id,
        "verdict": str(result.verdict),
        "actual_size": None if result.actual_size is None else str(result.actual_size),
        "mismatch": result.mismatch,
        "decided_by": None if result.decided_by is None else str(result.decided_by),
        "position_id": None if booking is None else booking.position_id,
        "flat": None if flat is None else flat.flat,
    }


@app.task(name="close_aged_position", bind=True, max_retries=50, **RETRY_ON_INFRASTRUCTURE)
def close_aged_position(self: Any, aged_id: int) -> dict[str, Any]:
    """Close one claimed aged position: whole or in chunks as the failure policy says
    (reduce-only market orders, exactly once), verified, checked flat."""
    try:
        return close_aged(aged_id, get_settings())
    except Requeue as requeue:
        raise self.retry(countdown=max(0.1, requeue.countdown_s)) from None
