"""Request bodies: read under the size cap, decoded as JSON."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from starlette.requests import Request

from workers.execution.signal import one_line

_BODY = "body"


class BodyTooLarge(Exception):
    """The body is longer than the cap; nothing of it past the cap was read."""

    def __init__(self, cap_bytes: int) -> None:
        super().__init__(f"the body is larger than the maximum {cap_bytes} bytes")
        self.cap_bytes = cap_bytes


class InvalidBody(Exception):
    """The body is not JSON (``str()`` is the one-line reason)."""


async def read_body(request: Request, cap_bytes: int) -> bytes:
    """The whole body, at most ``cap_bytes``; raises ``BodyTooLarge`` past it.

    A declared ``Content-Length`` over the cap is refused before reading; a body
    without one (chunked) is read until it passes the cap.
    """
    cached = getattr(request.state, "body", None)
    if cached is not None:
        return cached
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap_bytes:
        raise BodyTooLarge(cap_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap_bytes:
            raise BodyTooLarge(cap_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    request.state.body = body
    return body


def decode_json(body: bytes, *, exact_numbers: bool = False) -> Any:
    """The JSON value of ``body``; raises ``InvalidBody``.

    ``exact_numbers`` reads a fractional number as the Decimal of its text (a
    TradingView message renders numbers as text); otherwise it is a float, which
    the signal schema refuses, as the task does.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBody(f"{_BODY}: is not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise InvalidBody(f"{_BODY}: is empty; send a JSON object")
    try:
        if exact_numbers:
            return json.loads(text, parse_float=Decimal)
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidBody(
            one_line(
                f"{_BODY}: is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            )
        ) from None
    except RecursionError:
        raise InvalidBody(f"{_BODY}: is nested too deeply") from None
