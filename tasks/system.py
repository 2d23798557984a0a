"""Housekeeping tasks: the round-trip ping the demo and the smoke test use."""

from __future__ import annotations

from typing import Any

from workers.app import app
from workers.store.db import session_scope
from workers.store.events import record_event


@app.task(name="ping", bind=True)
def ping(self: Any, note: str = "") -> dict[str, Any]:
    """Write a ``ping`` event and return its id: proves broker, worker and Postgres work."""
    with session_scope() as session:
        event = record_event(session, "ping", payload={"note": note, "task_id": self.request.id})
        session.flush()
        return {"event_id": event.id, "worker": self.request.hostname}
