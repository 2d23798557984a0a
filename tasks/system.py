"""Housekeeping tasks: the round-trip ping the demo and the smoke test use."""

from __future__ import annotations

from typing import Any

import requests

from workers.app import app
from workers.settings import get_settings
from workers.store.db import session_scope
from workers.store.events import record_event, write_events


@app.task(name="ping", bind=True)
def ping(self: Any, note: str = "") -> dict[str, Any]:
    """Write a ``ping`` event and return its id: proves broker, worker and Postgres work."""
    with session_scope() as session:
        record_event(session, "ping", payload={"note": note, "task_id": self.request.id})
        (event_id,) = write_events(session)
        return {"event_id": event_id, "worker": self.request.hostname}


@app.task(name="send_alert_webhook", bind=True, max_retries=5)
def send_alert_webhook(self: Any, alert: dict[str, Any]) -> dict[str, Any]:
    """POST one critical alert as JSON to EXECQ_ALERT_WEBHOOK_URL (retried with backoff)."""
    url = get_settings().alert_webhook_url
    if not url:
        return {"sent": False, "reason": "no EXECQ_ALERT_WEBHOOK_URL"}
    try:
        response = requests.post(url, json=alert, timeout=5)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise self.retry(countdown=2**self.request.retries, exc=exc) from None
    return {"sent": True, "status": response.status_code}
