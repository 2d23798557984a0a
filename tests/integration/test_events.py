"""Events recorded in a transaction are written with it, in order (workers/store/events.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

pytestmark = pytest.mark.services


def _stored() -> list:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        return list(session.scalars(select(Event).order_by(Event.id)))


def test_a_transactions_events_are_written_in_the_order_recorded(db: None) -> None:
    from workers.store.db import session_scope
    from workers.store.events import record_event

    # When a transaction records events with ids, nulls and nested payloads
    with session_scope() as session:
        for index in range(12):
            record_event(
                session,
                f"step_{index}",
                order_id=index,
                client_order_id=f"cid-{index}",
                attempt=None if index % 2 else index,
                payload={"index": index, "nested": {"ok": True, "none": None}, "text": "é"},
            )

    # Then all of them are stored as recorded, ids in recording order
    stored = _stored()
    assert [event.type for event in stored] == [f"step_{index}" for index in range(12)]
    assert [event.order_id for event in stored] == list(range(12))
    assert stored[3].attempt is None and stored[4].attempt == 4
    assert stored[5].payload == {"index": 5, "nested": {"ok": True, "none": None}, "text": "é"}
    assert all(event.occurred_at.tzinfo is not None for event in stored)


def test_an_event_too_long_for_its_column_fails_the_transaction_instead_of_being_cut(
    db: None,
) -> None:
    from sqlalchemy.exc import DataError

    from workers.store.db import session_scope
    from workers.store.events import record_event

    with pytest.raises(DataError), session_scope() as session:
        record_event(session, "fine")
        record_event(session, "x" * 49)

    assert _stored() == []


def _intent(client_order_id: str) -> dict:
    from decimal import Decimal

    return {
        "client_order_id": client_order_id,
        "signal_id": "sig-intent",
        "leg": "open",
        "account": "binance",
        "symbol": "ETH/USDT:USDT",
        "side": "buy",
        "order_type": "market",
        "time_in_force": None,
        "amount": Decimal("0.01"),
        "price": None,
        "reduce_only": False,
        "purpose": "open",
        "position_id": None,
        "aged_id": None,
        "metadata_": {"strategy": "s1"},
    }


def test_an_intent_and_its_events_are_written_once_however_often_it_is_ensured(db: None) -> None:
    from workers.store.orders import ensure_intent

    # When the same intent is ensured twice (a redelivered task), as about to be sent
    first, created = ensure_intent(_intent("cid-once"), submitting=True)
    again, created_again = ensure_intent(_intent("cid-once"), submitting=True)

    # Then one row exists, and only the first call wrote events, all naming that row
    assert (created, created_again) == (True, False)
    assert again.id == first.id and first.status == "submitting"
    stored = _stored()
    assert [event.type for event in stored] == ["order_intent", "order_submitting"]
    assert {event.order_id for event in stored} == {first.id}
    assert {event.signal_id for event in stored} == {"sig-intent"}
    assert stored[0].payload["amount"] == "0.01" and stored[1].attempt == 0


def test_events_recorded_before_and_after_an_order_write_are_all_stored_in_order(
    db: None,
) -> None:
    from decimal import Decimal

    from workers.store.db import session_scope
    from workers.store.events import record_event
    from workers.store.orders import ensure_intent, load_order, lock_order, write_order

    order, _ = ensure_intent(_intent("cid-write"), submitting=True)

    # When a transaction records an event, writes the order row, then records another
    with session_scope() as session:
        locked = lock_order(session, "cid-write")
        record_event(session, "before_write", order_id=locked.id)
        write_order(session, locked.id, {"filled": Decimal("0.01"), "last_error": "none"})
        record_event(session, "after_write", order_id=locked.id)

    # Then the row changed and every event is stored, in the order recorded
    changed = load_order("cid-write")
    assert changed is not None and changed.filled == Decimal("0.01")
    assert [event.type for event in _stored()] == [
        "order_intent",
        "order_submitting",
        "before_write",
        "after_write",
    ]


def test_a_bad_event_written_with_the_order_row_leaves_both_unwritten(db: None) -> None:
    from decimal import Decimal

    from sqlalchemy.exc import DataError

    from workers.store.db import session_scope
    from workers.store.events import record_event
    from workers.store.orders import ensure_intent, load_order, lock_order, write_order

    ensure_intent(_intent("cid-bad"), submitting=True)

    # When an event too long for its column goes out with the order row's write
    with pytest.raises(DataError), session_scope() as session:
        locked = lock_order(session, "cid-bad")
        record_event(session, "x" * 49, order_id=locked.id)
        write_order(session, locked.id, {"filled": Decimal("0.01")})

    # Then neither the row change nor the event was written
    unchanged = load_order("cid-bad")
    assert unchanged is not None and unchanged.filled == 0
    assert [event.type for event in _stored()] == ["order_intent", "order_submitting"]
