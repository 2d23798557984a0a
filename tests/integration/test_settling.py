"""When is a symbol settled enough to trust a positions read? (chaos findings)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.conftest import store_fill, stored_aged_episode, stored_order

pytestmark = pytest.mark.services


def _booked_order(client_id: str, updated_at: datetime) -> object:
    return stored_order(
        client_id,
        "filled",
        "0.03",
        symbol="ETH/USDT:USDT",
        amount=Decimal("0.03"),
        updated_at=updated_at,
    )


def test_a_fill_booked_moments_ago_still_counts_as_unsettled_for_positions_reads(db: None) -> None:
    # A fill booked a second ago may not show in the exchange's positions yet
    # (positions lag): an aged close that trusted that read corrected the book to
    # the stale size and closed too little (chaos seed 2, an aged episode stuck).
    from workers.store.db import session_scope
    from workers.store.orders import unsettled_orders

    now = datetime.now(UTC)
    with session_scope() as session:
        session.add(_booked_order("c-recent", now - timedelta(seconds=1)))
        session.add(_booked_order("c-old", now - timedelta(minutes=5)))

    # Filled and booked: settled as far as the book is concerned
    assert unsettled_orders("binance", "ETH/USDT:USDT") == 0
    # but not for a positions read within the settle window
    window = now - timedelta(seconds=30)
    assert unsettled_orders("binance", "ETH/USDT:USDT", changed_since=window) == 1
    assert unsettled_orders("binance", "ETH/USDT:USDT", changed_since=now) == 0


def test_workers_do_not_store_a_started_state_before_the_task_body() -> None:
    # Celery stores STARTED before the task body, outside the task's retries: during
    # a Redis restart that store failed and the task was failed and acked before it
    # wrote anything (chaos seeds 2 and 3: a signal lost, no order, no event).
    from workers.app import app

    assert app.conf.task_track_started is False


def test_an_aged_close_that_fails_after_another_order_closed_its_position_stays_ended(
    db: None,
) -> None:
    # Chaos (short run, seed 11): while an aged close was in flight a producer's
    # order closed the position, which ended the episode (superseded); the close
    # then ended without closing it, and recording that failure made the episode
    # active again, with no open position: never swept again, stuck.
    from workers.flows.aged import _settle_close
    from workers.settings import get_settings
    from workers.store.aged import load_aged
    from workers.store.db import session_scope
    from workers.store.models import AgedPosition, Event, Order
    from workers.store.orders import OrderSnapshot
    from workers.store.positions import book_order_fill

    # Given a long in an aged episode whose close is in flight
    store_fill("open-1", "buy", "0.01", "60000")
    opened = book_order_fill("open-1")
    with session_scope() as session:
        episode = stored_aged_episode(
            opened.position_id,
            "closing",
            target_reached_at=datetime.now(UTC) - timedelta(seconds=60),
        )
        session.add(episode)
    in_flight = load_aged(episode.id)

    # When a producer's close closes the position first
    store_fill("close-1", "sell", "0.01", "61000", purpose="close")
    book_order_fill("close-1")
    # and the aged close then ends without a fill (reduce-only: nothing left to reduce)
    with session_scope() as session:
        refused = stored_order(
            "aged-close",
            "rejected",
            side="sell",
            purpose="aged_close",
            reduce_only=True,
            aged_id=episode.id,
            last_error="reduce-only rule not satisfied",
        )
        session.add(refused)
        session.flush()
        refused_snapshot = OrderSnapshot.of(session.get(Order, refused.id))
    result = _settle_close(in_flight, refused_snapshot, get_settings())

    # Then the episode stays ended, its attempts untouched, and the failure is on record
    assert result["status"] == "superseded"
    with session_scope() as session:
        ended = session.get(AgedPosition, episode.id)
        assert (ended.status, ended.attempts, ended.consecutive_failures) == ("superseded", 0, 0)
        failed = session.scalars(
            select(Event).where(Event.type == "aged_close_failed", Event.aged_id == episode.id)
        ).one()
        assert failed.payload["episode_already"] == "superseded"
