"""The recovery sweep's repairs of the position book when the exchange reports no entry price."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select

from tests.conftest import store_fill

BTC = "BTC/USDT:USDT"


def _positions() -> list:
    from workers.store.db import session_scope
    from workers.store.models import Position

    with session_scope() as session:
        return list(session.scalars(select(Position).order_by(Position.id)))


def _events(event_type: str) -> list:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        return list(session.scalars(select(Event).where(Event.type == event_type)))


def test_an_orphan_without_an_entry_price_is_left_out_with_an_event_not_booked_at_zero(
    db: None,
) -> None:
    from workers.execution import reconcile as rules
    from workers.flows.recovery import _apply

    # Given a position on the exchange that the book does not have, reported without entry
    orphan = rules.Adopt(rules.ExchangePosition("binance", BTC, Decimal("0.01"), None))

    # When the recovery sweep applies its repair
    outcome = _apply(orphan, datetime.now(UTC))

    # Then nothing is booked at an entry of 0, and the sweep says why
    assert outcome == "orphans_without_entry"
    assert _positions() == []
    [event] = _events("orphan_not_adopted")
    assert (event.account, event.symbol) == ("binance", BTC)
    assert event.payload["reason"] == "the exchange reports no entry price"


def test_a_size_conflict_without_an_exchange_entry_keeps_the_books_entry(db: None) -> None:
    from workers.execution import reconcile as rules
    from workers.flows.recovery import _apply
    from workers.store.positions import book_order_fill

    # Given a long of 0.01 at 60,000 in the book, 0.02 on an exchange that reports no entry
    store_fill("buy-1", "buy", "0.01", "60000")
    position_id = book_order_fill("buy-1").position_id
    book = rules.BookPosition("binance", BTC, Decimal("0.01"), Decimal("60000"), position_id)
    conflict = rules.Correct(
        book, rules.ExchangePosition("binance", BTC, Decimal("0.02"), None), ("size",)
    )

    # When the recovery sweep corrects the book
    assert _apply(conflict, datetime.now(UTC)) == "conflicts_corrected"

    # Then the size is the exchange's and the entry stays the book's
    [position] = _positions()
    assert (position.size, position.entry_price) == (Decimal("0.02"), Decimal("60000"))
    assert (position.side, position.verification) == ("long", "verified")
