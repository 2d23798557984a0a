"""The console's routes under ``/console``: pages, login and logout, actions.

=======  ==========================  ========  =============================================
method   path                        scope     answers
=======  ==========================  ========  =============================================
GET      /console                    read      the overview (``?aged=<id>``: that episode's
                                               chart)
GET      /console/events             read      the event log (``?kind=&id=&type=``)
GET      /console/login              none      the login form
POST     /console/login              none      a session for a valid key with ``read``
POST     /console/logout             read      the session ended
POST     /console/actions/{action}   operate   the checked action's confirmation page
POST     /console/confirm            operate   the action done; back to the overview
=======  ==========================  ========  =============================================

Pages are HTML; a refusal is an HTML page with the status (401 goes to the login
form). The page script asks for the page again every ``console_refresh_s`` with
``X-Console-Live: 1`` and swaps in its live sections; such a request without a
session is answered 401 instead of the login form.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from workers import redis_keys
from workers.api.auth import OPERATE, READ
from workers.api.bodies import BodyTooLarge, read_body
from workers.api.console import board
from workers.api.console.actions import (
    ACTION_KINDS,
    CONFIRMATION_FIELD,
    CancelAction,
    Confirmations,
    parse_action,
    perform,
)
from workers.api.console.forms import CSRF_FIELD, EventFilter, InvalidField, parse_form
from workers.api.console.pages import Pages, secured
from workers.api.console.sessions import (
    COOKIE_PATH,
    LOGIN_COOKIE,
    LOGIN_FORM_TTL_S,
    SESSION_COOKIE,
    ConsoleSession,
    Sessions,
)
from workers.api.problems import UNAVAILABLE_ERRORS
from workers.exchange.ratelimit import RateLimit, take_from_bucket
from workers.execution.order_state import IN_FLIGHT
from workers.redis_client import get_redis
from workers.settings import Settings

logger = logging.getLogger("execq.console")

LIVE_HEADER = "X-Console-Live"
# Login attempts per client address: a burst of 10, then one a second.
LOGIN_BUDGET = RateLimit(per_s=1.0, burst=10.0)
_IN_FLIGHT = {status.value for status in IN_FLIGHT}


class ConsoleRefusal(Exception):
    """Answered as an HTML page with ``status_code``."""

    def __init__(self, status_code: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.title = title
        self.detail = detail


class LoginRequired(Exception):
    """No live session: the login form (a live refresh gets 401)."""


@dataclass(frozen=True)
class Console:
    """What the console's routes share, built once per process (``app.state.console``)."""

    settings: Settings
    sessions: Sessions
    confirmations: Confirmations
    pages: Pages


def console_of(request: Request) -> Console:
    return request.app.state.console


class ConsoleRoute(APIRoute):
    """Answers a refusal, a missing login and an unreachable store as pages, not as the
    API's problem documents (a browser shows these)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            pages = console_of(request).pages
            try:
                return await handle(request)
            except LoginRequired:
                if request.headers.get(LIVE_HEADER):
                    return secured(PlainTextResponse("log in again", status_code=401))
                return secured(RedirectResponse("/console/login", status_code=303))
            except ConsoleRefusal as refusal:
                return pages.error(request, refusal.status_code, refusal.title, refusal.detail)
            except BodyTooLarge as exc:
                return pages.error(request, 413, "The form is too large", str(exc))
            except UNAVAILABLE_ERRORS as exc:
                logger.warning("console %s: a service is unreachable: %s", request.url.path, exc)
                response = pages.error(
                    request,
                    503,
                    "A service execq depends on is unreachable",
                    "PostgreSQL or Redis did not answer. Nothing was changed; try again shortly.",
                )
                response.headers["Retry-After"] = "5"
                return response

        return handler


router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


# --- sessions -------------------------------------------------------------------------------


async def _session(request: Request, scope: str | None = READ) -> ConsoleSession:
    """The request's session, whose key holds ``scope`` (None: any key may, as to log out)."""
    console = console_of(request)
    session = await run_in_threadpool(console.sessions.resume, request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise LoginRequired
    request.state.api_key = session.key.name
    if scope is not None and not session.key.allows(scope):
        raise ConsoleRefusal(
            403,
            "Not allowed with this key",
            f"The key '{session.key.name}' lacks the '{scope}' scope: the console refuses "
            f"this. Log in with a key that has it.",
        )
    return session


async def _form(request: Request, session: ConsoleSession | None) -> dict[str, str]:
    """The posted form, its CSRF token checked against the session's."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ConsoleRefusal(415, "Not a form", "Send the console's own forms.")
    body = await read_body(request, console_of(request).settings.api_max_body_bytes)
    try:
        form = parse_form(body)
    except InvalidField as invalid:
        raise ConsoleRefusal(422, "The form is invalid", str(invalid)) from None
    if session is not None and not session.csrf_matches(form.get(CSRF_FIELD)):
        raise ConsoleRefusal(
            403,
            "The form's token does not match",
            "The form was not sent by this session's page (or the page is older than the "
            "login). Nothing was done; reload the page and try again.",
        )
    return form


def _cookie_secure(request: Request) -> bool:
    return request.url.scheme == "https" or console_of(request).settings.console_secure_cookie


def _set_cookie(
    request: Request, response: Response, name: str, value: str, max_age_s: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age_s,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_cookie_secure(request),
    )


def _clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_cookie_secure(request)
    )


@router.get("/login")
async def login_form(request: Request) -> Response:
    console = console_of(request)
    session = await run_in_threadpool(console.sessions.resume, request.cookies.get(SESSION_COOKIE))
    if session is not None and session.key.allows(READ):
        return secured(RedirectResponse("/console", status_code=303))
    return await _login_page(request)


async def _login_page(
    request: Request, status_code: int = 200, error: str | None = None
) -> Response:
    console = console_of(request)
    token, cookie = await run_in_threadpool(console.sessions.new_login_form)
    response = console.pages.render(
        request, "login.html", status_code, login_token=token, error=error
    )
    _set_cookie(request, response, LOGIN_COOKIE, cookie, LOGIN_FORM_TTL_S)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    console = console_of(request)
    address = request.client.host if request.client else "unknown"
    wait_s = await run_in_threadpool(_login_wait_s, address)
    if wait_s > 0:
        raise ConsoleRefusal(
            429, "Too many logins", f"Too many login attempts from here; wait {wait_s:.0f} s."
        )
    form = await _form(request, None)
    if set(form) - {"login_token", "api_key"}:
        raise ConsoleRefusal(422, "The form is invalid", "Send the console's own login form.")
    valid_form = await run_in_threadpool(
        console.sessions.login_form_valid,
        form.get("login_token"),
        request.cookies.get(LOGIN_COOKIE),
    )
    if not valid_form:
        return await _login_page(
            request, 403, "The login form expired or came from elsewhere; try again."
        )
    presented = form.get("api_key", "").strip()
    key = request.app.state.context.keys.by_key(presented) if presented else None
    if key is None:
        logger.info("console login refused from %s: no such key", address)
        return await _login_page(request, 401, "That key is not accepted.")
    if not key.allows(READ):
        logger.info("console login refused for key %s: no read scope", key.name)
        return await _login_page(
            request, 403, f"The key '{key.name}' lacks the 'read' scope the console needs."
        )
    previous = await run_in_threadpool(console.sessions.resume, request.cookies.get(SESSION_COOKIE))
    if previous is not None:
        await run_in_threadpool(console.sessions.end, previous)
    cookie = await run_in_threadpool(console.sessions.start, key)
    logger.info("console login: key %s from %s", key.name, address)
    request.state.api_key = key.name
    response = secured(RedirectResponse("/console", status_code=303))
    _set_cookie(request, response, SESSION_COOKIE, cookie, console.settings.console_session_ttl_s)
    _clear_cookie(request, response, LOGIN_COOKIE)
    return response


def _login_wait_s(address: str) -> float:
    return take_from_bucket(
        get_redis(),
        redis_keys.console_login_budget(address),
        redis_keys.console_login_cooldown(address),
        LOGIN_BUDGET,
    )


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = await _session(request, scope=None)
    await _form(request, session)
    await run_in_threadpool(console_of(request).sessions.end, session)
    logger.info("console logout: key %s", session.key.name)
    response = secured(RedirectResponse("/console/login", status_code=303))
    _clear_cookie(request, response, SESSION_COOKIE)
    return response


# --- pages ----------------------------------------------------------------------------------


def _overview(settings: Settings, aged_id: int | None) -> dict[str, Any]:
    from workers.coordination import kill_switch_state

    now = datetime.now(UTC)
    selected = board.episode_chart(aged_id, now) if aged_id is not None else None
    return {
        "now": now,
        "kill_switch": kill_switch_state(),
        "accounts": board.accounts(settings),
        "positions": board.positions(),
        "aged": board.aged(now),
        "orders": board.orders(now),
        "alerts": board.alerts(now),
        "selected": selected,
        "selected_id": aged_id,
    }


@router.get("")
async def overview(request: Request) -> Response:
    session = await _session(request)
    console = console_of(request)
    raw = request.query_params.get("aged")
    aged_id = None
    if raw:
        if not (raw.isdigit() and len(raw) <= 18):
            raise ConsoleRefusal(422, "No such episode", "aged: an episode id is a number.")
        aged_id = int(raw)
    data = await run_in_threadpool(_overview, console.settings, aged_id)
    notice = None
    if not request.headers.get(LIVE_HEADER):
        notice = await run_in_threadpool(console.sessions.take_notice, session)
    return console.pages.render(
        request, "overview.html", session=session, notice=notice, live=True, **data
    )


@router.get("/events")
async def events(request: Request) -> Response:
    from workers.store import reports

    session = await _session(request)
    console = console_of(request)
    try:
        chosen = EventFilter.parse(request.query_params)
    except InvalidField as invalid:
        return console.pages.render(
            request,
            "events.html",
            422,
            session=session,
            chosen=EventFilter(),
            error=str(invalid),
            rows=[],
            kinds=EventFilter.KINDS,
        )
    rows = await run_in_threadpool(lambda: reports.recent_events(**chosen.query()))
    return console.pages.render(
        request,
        "events.html",
        session=session,
        live=True,
        chosen=chosen,
        error=None,
        rows=list(reversed(rows)),
        kinds=EventFilter.KINDS,
    )


# --- actions --------------------------------------------------------------------------------


@router.post("/actions/{kind}")
async def propose(request: Request, kind: str) -> Response:
    session = await _session(request, OPERATE)
    if kind not in ACTION_KINDS:
        raise ConsoleRefusal(404, "No such action", "The console has no such action.")
    form = await _form(request, session)
    try:
        action = parse_action(kind, form)
    except InvalidField as invalid:
        raise ConsoleRefusal(422, "The form is invalid", str(invalid)) from None
    order = None
    if isinstance(action, CancelAction):
        order = await run_in_threadpool(_cancellable, action.client_order_id)
    console = console_of(request)
    token = await run_in_threadpool(console.confirmations.issue, session, action)
    return console.pages.render(
        request,
        "confirm.html",
        session=session,
        action=action,
        order=order,
        confirmation=token,
        confirmation_field=CONFIRMATION_FIELD,
    )


def _cancellable(client_order_id: str) -> Any:
    from workers.store.orders import load_order

    order = load_order(client_order_id)
    if order is None:
        raise ConsoleRefusal(
            422, "The form is invalid", "client_order_id: names no order execq knows"
        )
    if order.status.value not in _IN_FLIGHT:
        raise ConsoleRefusal(
            422,
            "Nothing to cancel",
            f"client_order_id: the order is already {order.status.value}",
        )
    return order


@router.post("/confirm")
async def confirm(request: Request) -> Response:
    session = await _session(request, OPERATE)
    form = await _form(request, session)
    if set(form) - {CSRF_FIELD, CONFIRMATION_FIELD}:
        raise ConsoleRefusal(422, "The form is invalid", "Send the console's own form.")
    console = console_of(request)
    action = await run_in_threadpool(
        console.confirmations.redeem, session, form.get(CONFIRMATION_FIELD)
    )
    if action is None:
        raise ConsoleRefusal(
            409,
            "Nothing to confirm",
            "This confirmation was used already, has expired, or belongs to another "
            "session. Nothing was done.",
        )
    try:
        outcome = await run_in_threadpool(perform, action, session.key.name)
    except InvalidField as invalid:
        raise ConsoleRefusal(422, "The action cannot be done", str(invalid)) from None
    logger.info("console action by key %s: %s", session.key.name, action.kind)
    await run_in_threadpool(console.sessions.leave_notice, session, outcome)
    return secured(RedirectResponse("/console", status_code=303))
