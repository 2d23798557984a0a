"""``POST /v1/webhooks/tradingview``: TradingView alerts as signals (``workers.api.tradingview``)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from workers.api import problems
from workers.api.bodies import read_body

router = APIRouter(tags=["webhooks"])

TRADINGVIEW_PATH = "/v1/webhooks/tradingview"


@router.post(
    TRADINGVIEW_PATH,
    status_code=202,
    summary="A TradingView alert (its message as the body)",
    responses={
        200: {"description": "The same alert was recorded before: its signal's state."},
        **problems.documented_responses(
            problems.INVALID_JSON,
            problems.UNAUTHORIZED,
            problems.FORBIDDEN,
            problems.IN_PROGRESS,
            problems.BODY_TOO_LARGE,
            problems.INVALID_SIGNAL,
            problems.SIGNAL_CONFLICT,
            problems.STALE_ALERT,
            problems.RATE_LIMITED,
            problems.UNAVAILABLE,
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                media: {"schema": {"$ref": "#/components/schemas/TradingViewAlert"}}
                for media in ("application/json", "text/plain")
            },
        }
    },
)
async def tradingview_alert(request: Request) -> Response:
    """The message (JSON, sent as `text/plain` or `application/json`) carries the key in
    `secret`; its `timestamp` must be within `EXECQ_API_TRADINGVIEW_MAX_LAG_S` of now.
    The signal id comes from the strategy's order id and the alert's time, so
    TradingView's retries of one alert are one signal."""
    context = request.app.state.context
    body = await read_body(request, context.settings.api_max_body_bytes)
    bearer = None
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials:
        bearer = credentials.strip()
    answer = await run_in_threadpool(
        context.ingress.post_tradingview, body, bearer, datetime.now(UTC)
    )
    return answer.response()
