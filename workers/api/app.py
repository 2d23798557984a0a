"""The ASGI application of ``execq api``: one FastAPI app, one router per concern.

``create_app()`` builds it from the settings: the key ring, the per-key rate
limiter, the ingress (the outbox producer on the configured broker and
database), the problem-details handlers and the access log. Routers:

    workers.api.signals    POST /v1/signals, GET /v1/signals/{signal_id}
    workers.api.webhooks   POST /v1/webhooks/tradingview
    workers.api.console    /console: the operator's pages (a browser session per key)

Another surface is one more router: it authenticates with
``workers.api.auth.require(scope)``, reads through ``workers.store.reports``, and
answers refusals with ``workers.api.problems.Problem``; ``request.app.state.context``
holds what it needs. The console answers with HTML pages instead (a browser shows
them) and keeps its own state on ``request.app.state.console``.

Nothing here is imported by a worker, beat or producer (``workers.app`` stays
free of FastAPI); ``execq api`` imports it when it starts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.api import console, problems, signals, webhooks
from workers.api.auth import KeyRing
from workers.api.bodies import BodyTooLarge, InvalidBody
from workers.api.ingress import Ingress
from workers.api.problems import UNAVAILABLE_ERRORS, Problem
from workers.api.ratelimit import KeyRateLimiter
from workers.api.tradingview import TradingViewAlert
from workers.execution.signal import OrderArguments, SignalLimits
from workers.settings import Settings, get_settings

logger = logging.getLogger("execq.api")
access_logger = logging.getLogger("execq.api.access")

DESCRIPTION = """\
Signals from any producer into execq's outbox, with the guarantees a Python producer
gets: recorded before they are enqueued, executed once, every refusal an event.

Authenticate with `Authorization: Bearer <key>` (keys from `EXECQ_API_KEYS`), or a
Standard Webhooks signature, or (TradingView) the key in the body's `secret`.
Errors are RFC 9457 problem details (`application/problem+json`).
"""


@dataclass(frozen=True)
class ApiContext:
    """What the routes need, built once per process."""

    settings: Settings
    keys: KeyRing
    ingress: Ingress


def build_context(settings: Settings) -> ApiContext:
    from workers.app import app as celery_app
    from workers.producer import Producer
    from workers.redis_client import get_redis
    from workers.store.db import get_engine

    keys = KeyRing.from_settings(settings)
    if not keys.keys:
        logger.warning("EXECQ_API_KEYS is empty: every request but /health is refused (401)")
    limiter = KeyRateLimiter(
        get_redis(), settings.api_rate_limit_per_s, settings.api_rate_limit_burst
    )
    producer = Producer(celery_app, get_engine(), SignalLimits.of(settings))
    ingress = Ingress(producer, keys, limiter, max_lag_s=settings.api_tradingview_max_lag_s)
    return ApiContext(settings=settings, keys=keys, ingress=ingress)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="execq",
        description=DESCRIPTION,
        version="1",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.context = build_context(settings)
    _install_problem_handlers(app)
    app.add_middleware(AccessLog)
    app.include_router(signals.router)
    app.include_router(webhooks.router)
    console.install(app, settings)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


# --- problems --------------------------------------------------------------------------------


def _instance(request: Request) -> str:
    return request.url.path


def _install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return exc.response(_instance(request))

    async def on_too_large(request: Request, exc: Exception) -> Response:
        return Problem(problems.BODY_TOO_LARGE, str(exc)).response(_instance(request))

    async def on_invalid_body(request: Request, exc: Exception) -> Response:
        return Problem(problems.INVALID_JSON, str(exc), field="body").response(_instance(request))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        problem = problems.problem_for_status(exc.status_code)
        problem.headers.update(exc.headers or {})
        return problem.response(_instance(request))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        location = ".".join(str(part) for part in first.get("loc", ()))
        detail = f"{location}: {first.get('msg', 'is invalid')}"
        return Problem(problems.INVALID_SIGNAL, detail).response(_instance(request))

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        logger.warning("%s %s: a service is unreachable: %s", request.method, request.url.path, exc)
        return Problem(problems.UNAVAILABLE, headers={"Retry-After": "5"}).response(
            _instance(request)
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.error(
            "%s %s failed",
            request.method,
            request.url.path,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return Problem(problems.INTERNAL).response(_instance(request))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(BodyTooLarge, on_too_large)
    app.add_exception_handler(InvalidBody, on_invalid_body)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    for error in UNAVAILABLE_ERRORS:
        app.add_exception_handler(error, on_unavailable)
    app.add_exception_handler(Exception, on_unexpected)


# --- the access log --------------------------------------------------------------------------


class AccessLog:
    """One line per request: method, path (never the query string), status, time and the
    key's name. Headers are never logged, so neither is a key or a signature."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            if access_logger.isEnabledFor(logging.INFO):
                key = (scope.get("state") or {}).get("api_key") or "-"
                access_logger.info(
                    "%s %s %d %.1fms key=%s",
                    scope["method"],
                    scope["path"],
                    status[0],
                    (time.perf_counter() - started) * 1000,
                    key,
                )


# --- OpenAPI ---------------------------------------------------------------------------------


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the order schema and the alert schema as components (the
    routes read their bodies themselves, so the schema's checks run with this deployment's
    limits and every refusal is recorded)."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = document.setdefault("components", {}).setdefault("schemas", {})
    template = "#/components/schemas/{model}"
    for name, schema in (
        ("OrderArguments", TypeAdapter(OrderArguments).json_schema(ref_template=template)),
        ("TradingViewAlert", TradingViewAlert.model_json_schema(ref_template=template)),
    ):
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    components["Problem"] = problems.PROBLEM_SCHEMA
    app.openapi_schema = document
    return document
