"""The position book: fills booked into positions, exactly once (workers/store/positions.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.conftest import store_fill, stored_aged_episode, stored_order, wait_for

pytestmark = pytest.mark.services

BTC = "BTC/USDT:USDT"


def _positions() -> list:
    from workers.store.db import session_scope
    from workers.store.models import Position

    with session_scope() as session:
        return list(session.scalars(select(Position).order_by(Position.id)))


def _event_types() -> list[str]:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        return list(session.scalars(select(Event.type).order_by(Event.id)))


def test_fills_open_then_grow_a_position_and_a_second_booking_books_nothing(db: None) -> None:
    from workers.store.positions import book_order_fill

    # Given two filled buys
    store_fill("buy-1", "buy", "0.01", "60000")
    store_fill("buy-2", "buy", "0.03", "64000")

    # When both are booked, the second one twice (a redelivered verification)
    first = book_order_fill("buy-1")
    second = book_order_fill("buy-2")
    again = book_order_fill("buy-2")

    # Then one long of 0.04 at the size-weighted entry, booked once
    [position] = _positions()
    assert (position.side, position.size, position.status) == ("long", Decimal("0.04"), "open")
    assert position.entry_price == Decimal("63000")
    assert first.position_id == second.position_id == position.id
    assert not again.booked
    # the ORM's version counter moved with the Core update
    assert position.version == 2
    assert _event_types() == ["position_opened", "position_increased"]


def test_a_fill_that_crosses_zero_closes_with_pnl_ends_the_aged_episode_and_opens_the_rest(
    db: None,
) -> None:
    from workers.store.db import session_scope
    from workers.store.models import AgedPosition
    from workers.store.positions import book_order_fill

    # Given a long of 0.01 at 60,000 in an active aged episode
    store_fill("buy-1", "buy", "0.01", "60000")
    opened = book_order_fill("buy-1")
    with session_scope() as session:
        session.add(stored_aged_episode(opened.position_id, "active"))

    # When a sell of 0.03 at 61,000 fills (closes the long, leaves a short of 0.02)
    store_fill("sell-1", "sell", "0.03", "61000", purpose="close")
    booking = book_order_fill("sell-1")

    # Then the long is closed with its profit, and a short of the rest is open
    closed, short = _positions()
    assert (closed.status, closed.close_reason) == ("closed", "close")
    assert closed.realized_pnl == Decimal("10")
    assert closed.closed_at is not None
    assert (short.side, short.size, short.status) == ("short", Decimal("0.02"), "open")
    assert booking.closed_position_id == closed.id
    assert booking.position_id == short.id
    assert booking.realized_pnl == Decimal("10")
    # and the aged episode ended with its position
    with session_scope() as session:
        aged = session.scalars(select(AgedPosition)).one()
        assert (aged.status, aged.close_reason) == ("superseded", "close")
        assert aged.closed_at is not None
    assert _event_types() == [
        "position_opened",
        "position_closed",
        "aged_superseded",
        "position_opened",
    ]


def _bookings_waiting_for_a_slot() -> int:
    from sqlalchemy import text

    from workers.store.db import session_scope

    with session_scope() as session:
        return session.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
            )
        ).scalar_one()


def test_an_order_moving_to_filled_holds_its_book_slot_from_its_first_statement(
    db: None,
) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from workers.execution.order_state import OrderStatus
    from workers.store.db import session_scope
    from workers.store.orders import transition
    from workers.store.positions import book_fill, book_order_fill

    # Given a submitted BTC buy, and another BTC buy filled and not yet booked
    with session_scope() as session:
        session.add(stored_order("moving", "submitting"))
    store_fill("other", "buy", "0.02", "61000")
    settling, release = threading.Event(), threading.Event()

    def settle_after_release(session, order):
        settling.set()
        if not release.wait(30):
            raise TimeoutError("the test never released the settlement")
        return book_fill(session, order).order_values

    with ThreadPoolExecutor(max_workers=2) as pool:
        moving = pool.submit(
            transition,
            "moving",
            OrderStatus.FILLED,
            filled=Decimal("0.01"),
            average_price=Decimal("60000"),
            then=settle_after_release,
        )
        assert settling.wait(30), "the order never reached its settlement"

        # When the other fill is booked while the order is moving to filled
        other = pool.submit(book_order_fill, "other")

        # Then that booking waits for the slot until the order's transaction ends
        wait_for(_bookings_waiting_for_a_slot, 10, message="the second booking did not wait")
        release.set()
        moving.result(timeout=30)
        other.result(timeout=30)
    [position] = _positions()
    assert (position.side, position.size) == ("long", Decimal("0.03"))
    assert _event_types()[-2:] == ["position_opened", "position_increased"]
