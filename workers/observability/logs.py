"""Log lines for events: one line per event, with the ids that tie it to Postgres."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from workers.settings import get_settings

logger = logging.getLogger("execq.events")

_ID_FIELDS = ("client_order_id", "order_id", "position_id", "aged_id", "account", "symbol")


def log_event(event: Mapping[str, Any]) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    ids = {name: event[name] for name in _ID_FIELDS if event[name] is not None}
    if get_settings().log_format == "json":
        logger.info(
            json.dumps(
                {
                    "event": event["type"],
                    **ids,
                    "error_class": event["error_class"],
                    "payload": event["payload"],
                },
                default=str,
            )
        )
    else:
        rendered = " ".join(f"{key}={value}" for key, value in ids.items())
        extra = f" error_class={event['error_class']}" if event["error_class"] else ""
        logger.info("event=%s %s%s", event["type"], rendered, extra)
