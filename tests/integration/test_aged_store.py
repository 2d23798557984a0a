"""Aged episodes in Postgres: the guarded write, the close record at booking time, and the
Redis lock the aged sweep keeps alive."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.conftest import store_fill, stored_aged_episode, stored_order, wait_for


def _episode(aged_id: int):
    from workers.store.db import session_scope
    from workers.store.models import AgedPosition

    with session_scope() as session:
        return session.get(AgedPosition, aged_id)


def _event_types(aged_id: int) -> list[str]:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        return list(
            session.scalars(select(Event.type).where(Event.aged_id == aged_id).order_by(Event.id))
        )


def _aged_long(status: str = "closing", **columns) -> int:
    """A 0.02 BTC long at 60,000 in an aged episode; the episode's id."""
    from workers.store.db import session_scope
    from workers.store.positions import book_order_fill

    store_fill("open-1", "buy", "0.02", "60000")
    opened = book_order_fill("open-1")
    with session_scope() as session:
        episode = stored_aged_episode(opened.position_id, status, **columns)
        session.add(episode)
        session.flush()
        return episode.id


def _aged_close_fill(client_id: str, aged_id: int, amount: str, price: str) -> None:
    from workers.store.db import session_scope

    with session_scope() as session:
        session.add(
            stored_order(
                client_id,
                "filled",
                side="sell",
                amount=Decimal(amount),
                filled=Decimal(amount),
                average_price=Decimal(price),
                purpose="aged_close",
                reduce_only=True,
                aged_id=aged_id,
                acked_at=datetime.now(UTC),
            )
        )


def test_the_episodes_own_close_ends_it_closed_with_the_record_of_every_fill(db: None) -> None:
    from workers.store.positions import book_order_fill
    from workers.store.reports import aged_statistics

    # Given a 0.02 BTC long at 60,000 whose aged close was first seen due 2 s ago
    crossed = datetime.now(UTC) - timedelta(seconds=2)
    aged_id = _aged_long(target_reached_at=crossed)

    # When its close fills in two orders, half at 61,000 and half at 62,000, booked in turn
    _aged_close_fill("close-1", aged_id, "0.01", "61000")
    book_order_fill("close-1")
    assert _episode(aged_id).status == "closing"
    _aged_close_fill("close-2", aged_id, "0.01", "62000")
    book_order_fill("close-2")

    # Then the booking that closed the position closed the episode, with both fills in it
    episode = _episode(aged_id)
    assert episode.status == "closed"
    assert episode.close_price == Decimal("61500")
    assert episode.close_pnl == Decimal("30")  # 10 + 20
    assert episode.close_reason == "profitable" and episode.attempts == 1
    assert episode.close_duration_ms >= 2000
    # and it went there directly: never superseded on the way
    assert _event_types(aged_id) == ["aged_closed"]
    stats = aged_statistics(1)
    assert (stats["closed"], stats["closes_by_reason"]) == (1, {"profitable": 1})
    assert stats["realized_pnl"] == "30.000000000000000000"


def test_another_order_closing_the_position_supersedes_the_episode(db: None) -> None:
    from workers.store.positions import book_order_fill

    aged_id = _aged_long("active")
    store_fill("producer-close", "sell", "0.02", "61000", purpose="close")
    book_order_fill("producer-close")

    episode = _episode(aged_id)
    assert (episode.status, episode.close_reason, episode.close_price) == (
        "superseded",
        "close",
        None,
    )


def test_an_ended_episode_cannot_be_widened_or_made_active_again(db: None) -> None:
    from workers.execution.aged_state import AgedStatus, IllegalAgedTransition
    from workers.store.aged import load_aged, write_episode
    from workers.store.db import session_scope
    from workers.store.positions import book_order_fill

    # Given an episode that ended when another order closed its position
    aged_id = _aged_long("active")
    stale = load_aged(aged_id)
    store_fill("producer-close", "sell", "0.02", "61000", purpose="close")
    book_order_fill("producer-close")
    ended = load_aged(aged_id)
    assert ended.status == AgedStatus.SUPERSEDED

    # When a writer tries to widen it, or to set it active again
    with pytest.raises(IllegalAgedTransition), session_scope() as session:
        write_episode(
            session, ended, event="aged_tolerance_widened", extra_tolerance_percent=Decimal(2)
        )
    with pytest.raises(IllegalAgedTransition), session_scope() as session:
        write_episode(session, ended, to=AgedStatus.ACTIVE, event="aged_close_failed")
    # or a writer that read it while it was active comes late
    with session_scope() as session:
        late = write_episode(
            session, stale, event="aged_tolerance_widened", extra_tolerance_percent=Decimal(2)
        )

    # Then nothing changed and nothing was recorded
    assert late is False
    episode = _episode(aged_id)
    assert (episode.status, episode.extra_tolerance_percent) == ("superseded", Decimal(0))
    assert _event_types(aged_id) == ["aged_superseded"]


def test_the_chunk_task_without_the_position_lock_no_longer_exists() -> None:
    from workers.app import app

    app.loader.import_default_modules()
    assert "close_aged_position" in app.tasks
    assert "close_position_in_chunks" not in app.tasks


def test_a_lock_kept_alive_outlives_its_lifetime_and_expires_soon_after_renewals_stop(
    redis_clean: None,
) -> None:
    from workers.coordination import kept_alive, try_lock
    from workers.redis_client import get_redis

    # Given a lock that lives 0.3 s, renewed every 0.1 s
    key = f"execq:test:keep-alive:{uuid.uuid4().hex}"
    lock = try_lock(key, 0.3)
    assert lock is not None
    with kept_alive(lock, 0.3, every_s=0.1) as keeper:
        # When it has been renewed many times over its lifetime
        wait_for(lambda: keeper.renewals >= 6, 10, message="the lock was never renewed")
        # Then it is still ours
        assert get_redis().get(key) == lock.token
        assert not keeper.lost
    # and once the renewals stop it expires within its lifetime, unless released
    assert 0 < get_redis().pttl(key) <= 300
    wait_for(lambda: not get_redis().exists(key), 5, message="the lock never expired")
    assert try_lock(key, 0.3) is not None


def test_liquidation_orders_are_verified_like_every_filled_order(worker, sim) -> None:
    from workers.app import app
    from workers.coordination import set_kill_switch
    from workers.producer import submit_market_order
    from workers.store.db import session_scope
    from workers.store.models import Order

    # Given a position opened through execq
    summary = submit_market_order(
        f"liq-test-{uuid.uuid4().hex[:10]}", "binance", "ETH/USDT:USDT", "buy", "0.1"
    ).get(timeout=60)
    assert summary["status"] == "filled"

    # When everything is liquidated
    result = app.send_task("emergency_liquidate_all", kwargs={"reason": "test"}).get(timeout=120)
    set_kill_switch(False)

    # Then its close order carries its verification verdict
    assert result["closed"] == 1
    with session_scope() as session:
        closes = session.scalars(select(Order).where(Order.purpose == "liquidation")).all()
        assert [(order.status, order.verification) for order in closes] == [("filled", "verified")]


def test_a_sweep_records_the_first_price_past_the_target_even_while_a_close_waits(
    db: None, redis_clean: None, sim
) -> None:
    from workers.flows.aged_sweep import sweep_aged
    from workers.settings import get_settings

    # Given a BTC long at 60,000 opened a day ago (so its target is far below the price of
    # 65,000), whose fifth close in a row failed a moment ago: the next waits 16 s
    from workers.store.db import session_scope
    from workers.store.models import Position

    failed_at = datetime.now(UTC)
    aged_id = _aged_long(
        "active",
        phase="progressive",
        consecutive_failures=5,
        alerted_failures=5,
        last_attempt_at=failed_at,
    )
    with session_scope() as session:
        position = session.get(Position, _episode(aged_id).position_id)
        position.opened_at = failed_at - timedelta(days=1)

    # When a sweep runs
    before = datetime.now(UTC)
    report = sweep_aged(get_settings())

    # Then it claims nothing yet, but records when it first saw the price past the target
    assert report.closes_enqueued == []
    episode = _episode(aged_id)
    assert episode.status == "active"
    assert before <= episode.target_reached_at <= datetime.now(UTC)
    assert "aged_target_reached" in _event_types(aged_id)
    assert "aged_close_claimed" not in _event_types(aged_id)
