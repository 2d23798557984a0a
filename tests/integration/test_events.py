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
