"""The console's form fields, checked on the server: a bad field is a one-line refusal
naming it, and nothing is done."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

CSRF_FIELD = "csrf_token"
# A form is a few short fields; more is not a form of ours.
MAX_FORM_FIELDS = 8
# execq's client order ids (``workers.execution.client_ids``) fit both exchanges'
# alphabets; this is the wider one (Binance's), so an adopted order's id passes too.
CLIENT_ORDER_ID = re.compile(r"[.A-Za-z0-9:/_-]{1,36}")
EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]{0,47}")
MAX_SIGNAL_ID_CHARS = 256
EVENTS_SHOWN = 200


class InvalidField(Exception):
    """A form field is missing or invalid; ``str()`` is the one-line reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as one value per field; raises
    ``InvalidField`` on text that is not UTF-8, a repeated field or too many fields."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except UnicodeDecodeError:
        raise InvalidField("form", "is not UTF-8") from None
    except ValueError:
        raise InvalidField("form", f"has more than {MAX_FORM_FIELDS} fields") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidField(name[:40], "is given more than once")
        form[name] = value
    return form


def printable_line(text: str) -> bool:
    return not any(unicodedata.category(char).startswith("C") for char in text)


@dataclass(frozen=True)
class EventFilter:
    """Which events the log shows: those of one signal, order, position or aged episode
    (or the latest of all), optionally of one type."""

    kind: str = ""
    value: str = ""
    type: str = ""

    KINDS = ("signal", "order", "position", "episode")

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> EventFilter:
        kind = (query.get("kind") or "").strip()
        value = (query.get("id") or "").strip()
        event_type = (query.get("type") or "").strip()
        if kind and kind not in cls.KINDS:
            raise InvalidField("kind", "must be signal, order, position or episode")
        if value and not kind:
            raise InvalidField("kind", "say what the id names: signal, order, position or episode")
        if kind and not value:
            raise InvalidField("id", f"give the {kind}'s id")
        if kind in ("position", "episode") and not (value.isdigit() and len(value) <= 18):
            raise InvalidField("id", f"a {kind} id is a number")
        if kind == "order" and not CLIENT_ORDER_ID.fullmatch(value):
            raise InvalidField("id", "an order is its number or its client order id")
        if kind == "signal" and (len(value) > MAX_SIGNAL_ID_CHARS or not printable_line(value)):
            raise InvalidField("id", f"a signal id is one line of at most {MAX_SIGNAL_ID_CHARS}")
        if event_type and not EVENT_TYPE.fullmatch(event_type):
            raise InvalidField("type", "an event type is lower-case letters, digits and _")
        return cls(kind, value, event_type)

    def query(self) -> dict[str, object]:
        """The arguments of ``workers.store.reports.recent_events``."""
        arguments: dict[str, object] = {"limit": EVENTS_SHOWN}
        if self.type:
            arguments["types"] = (self.type,)
        if self.kind == "signal":
            arguments["signal_id"] = self.value
        elif self.kind == "order":
            arguments["order"] = self.value
        elif self.kind == "position":
            arguments["position_id"] = int(self.value)
        elif self.kind == "episode":
            arguments["aged_id"] = int(self.value)
        return arguments
