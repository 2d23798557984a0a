"""The kill switch's durable state: the one ``kill_switch`` row, written with its event."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from workers.store.db import session_scope
from workers.store.models import KillSwitch


def load_kill_switch() -> KillSwitch | None:
    """The row as last written; None when the switch was never set."""
    with session_scope() as session:
        return session.get(KillSwitch, 1)


def save_kill_switch(
    session: Session, *, engaged: bool, reason: str | None, since: datetime, set_by: str | None
) -> None:
    """Write the state in the session's transaction (the caller records its event there too)."""
    values = {"engaged": engaged, "reason": reason, "since": since, "set_by": set_by}
    statement = insert(KillSwitch).values(id=1, **values)
    session.execute(statement.on_conflict_do_update(index_elements=["id"], set_=values))
