"""When is a symbol settled enough to trust a positions read? (chaos findings)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.conftest import stored_order

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
