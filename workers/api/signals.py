"""``POST /v1/signals`` and ``GET /v1/signals/{signal_id}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from workers.api import problems
from workers.api.auth import READ, SIGNAL, ApiKey, require
from workers.api.bodies import BodyTooLarge, read_body
from workers.api.ingress import IDEMPOTENCY_HEADER, SIGNALS_PATH

router = APIRouter(tags=["signals"])

_ACCEPTED: dict[str, Any] = {
    "description": "Recorded in the outbox and enqueued (`enqueued: false`: recorded, the "
    "recovery sweep sends it). `Location` is the status URL.",
    "content": {
        "application/json": {
            "example": {
                "signal_id": "bot1-2026-01-01T12:00:00Z-eth",
                "client_order_id": "xqopen-5c0b0e7f5b1a4c8e9d2f3a61b7c4",
                "task_id": "0b9e3c1e-6f0d-4a53-8a3e-3b2f9a4f6c11",
                "state": "queued",
                "enqueued": True,
                "status_url": "/v1/signals/bot1-2026-01-01T12%3A00%3A00Z-eth",
            }
        }
    },
}
_STATE: dict[str, Any] = {
    "description": "The signal's state, its orders (status, filled, average price) and "
    "events. For a POST: the same key with the same order was recorded before.",
}


@router.post(
    SIGNALS_PATH,
    status_code=202,
    summary="Send a signal (one market or limit order)",
    responses={
        202: _ACCEPTED,
        200: _STATE,
        **problems.documented_responses(
            problems.INVALID_JSON,
            problems.UNAUTHORIZED,
            problems.FORBIDDEN,
            problems.IN_PROGRESS,
            problems.BODY_TOO_LARGE,
            problems.INVALID_SIGNAL,
            problems.SIGNAL_CONFLICT,
            problems.RATE_LIMITED,
            problems.UNAVAILABLE,
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/OrderArguments"}}
            },
        }
    },
)
async def post_signal(
    request: Request,
    caller: Annotated[ApiKey, Depends(require(SIGNAL))],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_HEADER,
            description="The signal id, when the body has no `signal_id` (or the same one).",
        ),
    ] = None,
) -> Response:
    """The body is the order task's arguments (a `price` makes it a limit order). The
    signal id and leg are the idempotency key: the same order again answers 200 with its
    state, another order under it 422 `signal-conflict`."""
    context = request.app.state.context
    try:
        body: bytes | None = await read_body(request, context.settings.api_max_body_bytes)
    except BodyTooLarge:
        body = None
    answer = await run_in_threadpool(context.ingress.post_signal, caller, body, idempotency_key)
    return answer.response()


@router.get(
    SIGNALS_PATH + "/{signal_id:path}",
    summary="A signal's state, orders and events",
    responses={
        200: _STATE,
        **problems.documented_responses(
            problems.UNAUTHORIZED,
            problems.FORBIDDEN,
            problems.NOT_FOUND,
            problems.RATE_LIMITED,
            problems.UNAVAILABLE,
        ),
    },
)
async def get_signal(
    request: Request, signal_id: str, caller: Annotated[ApiKey, Depends(require(READ))]
) -> Response:
    """`state`: `queued`, `refused`, `expired`, `in_progress` or `done`; each order with
    its status, `filled` and `average_price` (the order result's fields)."""
    answer = await run_in_threadpool(
        request.app.state.context.ingress.signal_status, caller, signal_id
    )
    return answer.response()
