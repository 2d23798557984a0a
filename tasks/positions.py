"""verify_position: is the position there, and how big? Then book it.

Chained after every order that may have filled (the order task enqueues it)
and callable on its own with a client order id. Books the verified fill into
the position book exactly once; after a fill that should leave the position
flat, checks that it really is.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from workers import metrics
from workers.aged import close_aged, close_in_chunks
from workers.app import app
from workers.execution.verification import Verdict
from workers.settings import get_settings
from workers.store import orders as order_store
from workers.store.aged import load_aged
from workers.store.db import session_scope
from workers.store.events import raise_alert, record_event
from workers.store.models import Order, Position
from workers.store.positions import book_order_fill
from workers.submission import Requeue
from workers.verifier import check_flat, verify_order


@app.task(name="verify_position", bind=True, max_retries=5)
def verify_position(self: Any, client_order_id: str) -> dict[str, Any]:
    settings = get_settings()
    order = order_store.load_order(client_order_id)
    if order is None:
        raise LookupError(f"no order with client order id {client_order_id}")
    result = verify_order(order, settings)
    order = order_store.load_order(client_order_id)
    assert order is not None
    _record_verdict(order.id, result)
    metrics.observe_verdict(order.account, str(result.verdict))

    booking = book_order_fill(client_order_id) if result.verdict == Verdict.VERIFIED else None
    flat = None
    if booking is not None and booking.closed_position_id is not None and booking.size_after == 0:
        flat = check_flat(
            order.account,
            order.symbol,
            settings,
            position_id=booking.closed_position_id,
            context=f"{order.purpose} {client_order_id}",
        )
    return {
        "client_order_id": client_order_id,
        "verdict": str(result.verdict),
        "actual_size": None if result.actual_size is None else str(result.actual_size),
        "mismatch": result.mismatch,
        "decided_by": None if result.decided_by is None else str(result.decided_by),
        "position_id": None if booking is None else booking.position_id,
        "flat": None if flat is None else flat.flat,
    }


def _record_verdict(order_id: int, result: Any) -> None:
    with session_scope() as session:
        order = session.scalars(select(Order).where(Order.id == order_id).with_for_update()).one()
        order.verification = str(result.verdict)
        ids = dict(
            order_id=order.id,
            client_order_id=order.client_order_id,
            signal_id=order.signal_id,
            account=order.account,
            symbol=order.symbol,
            position_id=order.position_id,
        )
        payload = {
            "actual_size": None if result.actual_size is None else str(result.actual_size),
            "expected_size": str(order.amount),
            "mismatch": result.mismatch,
            "decided_by": None if result.decided_by is None else str(result.decided_by),
        }
        record_event(session, f"verification_{result.verdict}", **ids, payload=payload)
        if result.verdict == Verdict.UNKNOWN:
            if order.position_id is not None:
                position = session.get(Position, order.position_id)
                if position is not None:
                    position.verification = "unknown"
            raise_alert(
                session,
                "verification_unknown",
                f"could not verify {order.account} {order.symbol} order {order.client_order_id} "
                "within the budget; left for the recovery sweep",
                severity="warning",
                account=order.account,
                symbol=order.symbol,
                order_id=order.id,
            )


@app.task(name="close_aged_position", bind=True, max_retries=50)
def close_aged_position(self: Any, aged_id: int) -> dict[str, Any]:
    """Close one aged position (reduce-only market, exactly once), verify flat, record it."""
    try:
        return close_aged(aged_id, get_settings())
    except Requeue as requeue:
        raise self.retry(countdown=max(0.1, requeue.countdown_s)) from None


@app.task(name="close_position_in_chunks", bind=True, max_retries=50)
def close_position_in_chunks(self: Any, aged_id: int) -> dict[str, Any]:
    """The partial-chunk fallback on its own (the close task uses it after repeated failures)."""
    view = load_aged(aged_id)
    if view is None or view.status not in ("active", "closing"):
        return {"aged_id": aged_id, "status": None if view is None else view.status}
    try:
        return close_in_chunks(view, get_settings())
    except Requeue as requeue:
        raise self.retry(countdown=max(0.1, requeue.countdown_s)) from None
