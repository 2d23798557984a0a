"""Errors as RFC 9457 problem details (``application/problem+json``).

Every refusal the API gives is a ``Problem``: an HTTP status, a ``type`` from the
catalogue below (``urn:execq:problem:<slug>``, documented in docs/api.md), a
``title`` that is the same for every problem of that type, and a ``detail`` for
this occurrence (for a signal, the same one-line reason its ``signal_rejected``
event records). Extension members: ``field`` (the argument at fault), ``fields``
(the terms two orders under one key differ in), ``signal_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import OperationalError as SqlOperationalError
from starlette.responses import JSONResponse

from workers.store.db import DatabaseUnavailable

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:execq:problem:"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return TYPE_PREFIX + self.slug


INVALID_JSON = ProblemType("invalid-json", 400, "The body is not a JSON object")
UNAUTHORIZED = ProblemType("unauthorized", 401, "A valid API key is required")
BAD_SIGNATURE = ProblemType("bad-signature", 401, "The webhook signature does not verify")
FORBIDDEN = ProblemType("forbidden", 403, "The API key lacks the scope this needs")
NOT_FOUND = ProblemType("not-found", 404, "Nothing is known under this name")
METHOD_NOT_ALLOWED = ProblemType("method-not-allowed", 405, "The method is not allowed here")
IN_PROGRESS = ProblemType(
    "signal-in-progress", 409, "A request with this idempotency key is still being recorded"
)
BODY_TOO_LARGE = ProblemType("body-too-large", 413, "The request body is too large")
INVALID_SIGNAL = ProblemType("invalid-signal", 422, "The signal is invalid")
SIGNAL_CONFLICT = ProblemType(
    "signal-conflict", 422, "The idempotency key is already another order"
)
STALE_ALERT = ProblemType("stale-alert", 422, "The alert's timestamp is too far from now")
RATE_LIMITED = ProblemType("rate-limited", 429, "Too many requests for this API key")
INTERNAL = ProblemType("internal-error", 500, "The server failed to answer")
UNAVAILABLE = ProblemType(
    "service-unavailable", 503, "A service execq depends on (PostgreSQL, Redis) is unreachable"
)

# Failures of a service the API depends on: the request may succeed later (503).
UNAVAILABLE_ERRORS = (
    SqlOperationalError,
    psycopg.OperationalError,
    DatabaseUnavailable,
    redis.RedisError,
    KombuOperationalError,
)

CATALOGUE = (
    INVALID_JSON,
    UNAUTHORIZED,
    BAD_SIGNATURE,
    FORBIDDEN,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    IN_PROGRESS,
    BODY_TOO_LARGE,
    INVALID_SIGNAL,
    SIGNAL_CONFLICT,
    STALE_ALERT,
    RATE_LIMITED,
    INTERNAL,
    UNAVAILABLE,
)
# The problem for a status the framework answers by itself (an unknown path, a wrong method).
_BY_STATUS = {
    kind.status: kind
    for kind in (UNAUTHORIZED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED, BODY_TOO_LARGE)
    + (RATE_LIMITED, UNAVAILABLE)
}


class Problem(Exception):
    """A refusal, answered as a problem-details document."""

    def __init__(
        self,
        kind: ProblemType,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or kind.title)
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = {name: value for name, value in extensions.items() if value is not None}

    @property
    def status(self) -> int:
        return self.kind.status

    def document(self, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.kind.uri,
            "title": self.kind.title,
            "status": self.kind.status,
        }
        if self.detail:
            body["detail"] = self.detail
        body["instance"] = instance
        body.update(self.extensions)
        return body

    def response(self, instance: str) -> JSONResponse:
        return JSONResponse(
            self.document(instance),
            status_code=self.kind.status,
            headers=self.headers,
            media_type=PROBLEM_JSON,
        )


def problem_for_status(status: int, detail: str | None = None) -> Problem:
    """The catalogue's problem for a status the framework chose (404, 405, ...)."""
    kind = _BY_STATUS.get(status)
    if kind is None:
        kind = INTERNAL if status >= 500 else ProblemType("http-error", status, "Request refused")
    return Problem(kind, detail)


def documented_responses(*kinds: ProblemType) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problems a route may answer."""
    responses: dict[int | str, dict[str, Any]] = {}
    for kind in kinds:
        entry = responses.setdefault(
            kind.status,
            {
                "description": "",
                "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            },
        )
        line = f"`{kind.slug}`: {kind.title}"
        entry["description"] = f"{entry['description']}; {line}" if entry["description"] else line
    return responses


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string", "examples": [INVALID_SIGNAL.uri]},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "field": {"type": "string", "description": "The argument at fault."},
        "fields": {
            "type": "array",
            "items": {"type": "string"},
            "description": "The terms in which two orders under one key differ.",
        },
        "signal_id": {"type": "string"},
    },
    "required": ["type", "title", "status"],
}
