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
