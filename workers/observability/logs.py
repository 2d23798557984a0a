"""Log lines for events, and the JSON form of every log line (``EXECQ_LOG_FORMAT=json``).

An event is one line with the ids that tie it to Postgres. In JSON, every line
is one object: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the
task's ``task_id`` and ``task_name`` inside a task, an event's fields
(``event``, the ids, ``error_class``, ``payload``) and ``exc`` with the traceback
of a logged exception. ``workers.celery_ext.json_logs`` puts the formatter on
the handlers Celery sets up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from workers.settings import get_settings

logger = logging.getLogger("execq.events")

_ID_FIELDS = ("client_order_id", "order_id", "position_id", "aged_id", "account", "symbol")
# The attribute a record carries its structured fields in (``extra={FIELDS: {...}}``).
FIELDS = "execq"


def log_event(event: Mapping[str, Any]) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    ids = {name: event[name] for name in _ID_FIELDS if event[name] is not None}
    rendered = " ".join(f"{key}={value}" for key, value in ids.items())
    extra = f" error_class={event['error_class']}" if event["error_class"] else ""
    fields = None
    if get_settings().log_format == "json":
        fields = {
            FIELDS: {
                "event": event["type"],
                **ids,
                "error_class": event["error_class"],
                "payload": event["payload"],
            }
        }
    logger.info("event=%s %s%s", event["type"], rendered, extra, extra=fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_task_fields())
        for name, value in (getattr(record, FIELDS, None) or {}).items():
            entry.setdefault(name, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def _task_fields() -> dict[str, str]:
    from celery import current_task

    task = current_task
    if not task or task.request.id is None:
        return {}
    return {"task_id": task.request.id, "task_name": task.name}
