"""The operator's console over plain HTTP: login and sessions, CSRF, scopes, the checks on
every form field, one-time confirmations, and the actions' effects and events.

``execq api`` runs as a subprocess with a worker and the simulator; the browser tests
(``test_console_browser.py``) drive the same pages in Chromium.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import stored_order, wait_for

ETH = "ETH/USDT:USDT"
OPERATOR_KEY = "operator-" + "o" * 40
VIEWER_KEY = "viewer-" + "v" * 40
BOT_KEY = "bot-" + "b" * 40
# The API process's accounts carry credentials: no page may show them.
ACCOUNT_SECRET = "exchange-secret-" + "x" * 24
CONSOLE_KEYS = [
    {"name": "operator", "key": OPERATOR_KEY, "scopes": ["read", "operate"]},
    {"name": "viewer", "key": VIEWER_KEY, "scopes": ["read"]},
    {"name": "bot", "key": BOT_KEY, "scopes": ["signal"]},
]
CONSOLE_ENV = {
    "EXECQ_API_KEYS": json.dumps(CONSOLE_KEYS),
    "EXECQ_API_RATE_LIMIT_PER_S": "1000",
    "EXECQ_API_RATE_LIMIT_BURST": "1000",
    "EXECQ_CONSOLE_REFRESH_S": "1",
    "EXECQ_ACCOUNTS": json.dumps(
        [
            {
                "name": name,
                "ccxt_class": ccxt_class,
                "mode": "sim",
                "api_key": f"{name}-key-{ACCOUNT_SECRET}",
                "secret": f"{name}-{ACCOUNT_SECRET}",
            }
            for name, ccxt_class in (("binance", "binanceusdm"), ("bybit", "bybit"))
        ]
    ),
}
HOSTILE = "<img src=x onerror=window.pwned=1>"


@pytest.fixture(scope="module")
def console_url(database: str, redis_server: str, process_stack) -> Iterator[str]:
    url = process_stack.start_api(name="console-http", extra_env=CONSOLE_ENV)
    yield url
    process_stack.processes["console-http"].stop()


@pytest.fixture
def http(console_url: str, db, redis_clean) -> Iterator[httpx.Client]:
    """An HTTP client that keeps cookies like a browser, on clean state."""
    with httpx.Client(base_url=console_url, timeout=15, follow_redirects=False) as client:
        yield client


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field on the page"
    return found.group(1)


def log_in(client: httpx.Client, key: str) -> httpx.Response:
    form = client.get("/console/login")
    assert form.status_code == 200
    return client.post(
        "/console/login",
        data={"login_token": hidden(form.text, "login_token"), "api_key": key},
    )


def logged_in(client: httpx.Client, key: str = OPERATOR_KEY) -> str:
    """Log in; the overview's HTML."""
    answer = log_in(client, key)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console"
    page = client.get("/console")
    assert page.status_code == 200, page.text
    return page.text


def propose(client: httpx.Client, kind: str, **fields: str) -> httpx.Response:
    csrf = hidden(client.get("/console").text, "csrf_token")
    return client.post(f"/console/actions/{kind}", data={"csrf_token": csrf, **fields})


def confirm(client: httpx.Client, page: httpx.Response) -> httpx.Response:
    return client.post(
        "/console/confirm",
        data={
            "csrf_token": hidden(page.text, "csrf_token"),
            "confirmation": hidden(page.text, "confirmation"),
        },
    )


def events_of(*types: str) -> list[Any]:
    from workers.store.db import session_scope
    from workers.store.models import Event

    with session_scope() as session:
        return list(session.scalars(select(Event).where(Event.type.in_(types)).order_by(Event.id)))


def kill_switch_on() -> bool:
    from workers.coordination import kill_switch_state

    return kill_switch_state().on


# --- sessions -------------------------------------------------------------------------------


def test_without_a_session_the_console_sends_a_browser_to_the_login_form(http):
    answer = http.get("/console")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login"
    # A page's own refresh is told to log in again instead
    assert http.get("/console", headers={"X-Console-Live": "1"}).status_code == 401


def test_a_login_sets_a_signed_httponly_strict_cookie_that_holds_no_key(http):
    answer = log_in(http, OPERATOR_KEY)
    assert answer.status_code == 303
    cookie = next(
        header
        for header in answer.headers.get_list("set-cookie")
        if header.startswith("execq_console=")
    )
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/console"} <= attributes
    value = cookie.split(";")[0].removeprefix("execq_console=")
    assert OPERATOR_KEY not in value and "operator" not in value
    page = http.get("/console")
    assert page.status_code == 200
    assert "operator" in page.text
    # The pages are not framed, run only the console's own script and are not cached
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"


def test_no_secret_appears_on_any_page(http):
    pages = [logged_in(http)]
    pages.append(http.get("/console/events").text)
    pages.append(propose(http, "kill_switch", state="on", reason="look").text)
    for html in pages:
        for secret in (OPERATOR_KEY, VIEWER_KEY, BOT_KEY, ACCOUNT_SECRET):
            assert secret not in html


def test_a_cookie_with_a_forged_signature_is_no_session(http, console_url):
    logged_in(http)
    session_id, signature = http.cookies["execq_console"].split(".")
    forged = ("B" if signature[0] == "A" else "A") + signature[1:]
    for cookie, status in ((f"{session_id}.{signature}", 200), (f"{session_id}.{forged}", 303)):
        with httpx.Client(base_url=console_url, cookies={"execq_console": cookie}) as other:
            assert other.get("/console", follow_redirects=False).status_code == status


def test_a_new_login_ends_the_browsers_previous_session(http, console_url):
    # Given a browser logged in as the viewer, and a login form open in another tab
    logged_in(http, VIEWER_KEY)
    viewer_cookie = http.cookies["execq_console"]
    with httpx.Client(base_url=console_url) as tab:
        token = hidden(tab.get("/console/login").text, "login_token")
        login_cookie = tab.cookies["execq_console_login"]
    # When it logs in there as the operator
    with httpx.Client(
        base_url=console_url,
        cookies={"execq_console": viewer_cookie, "execq_console_login": login_cookie},
    ) as same_browser:
        answer = same_browser.post(
            "/console/login", data={"login_token": token, "api_key": OPERATOR_KEY}
        )
        assert answer.status_code == 303
    # Then the viewer's session is over
    with httpx.Client(base_url=console_url, cookies={"execq_console": viewer_cookie}) as old:
        assert old.get("/console", follow_redirects=False).status_code == 303


def test_logout_ends_the_session_on_the_server(http, console_url):
    html = logged_in(http)
    copied = http.cookies["execq_console"]
    with httpx.Client(base_url=console_url, cookies={"execq_console": copied}) as thief:
        assert thief.get("/console", follow_redirects=False).status_code == 200
    answer = http.post("/console/logout", data={"csrf_token": hidden(html, "csrf_token")})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login"
    # A copy of the cookie taken before the logout opens nothing
    with httpx.Client(base_url=console_url, cookies={"execq_console": copied}) as thief:
        assert thief.get("/console", follow_redirects=False).status_code == 303


@pytest.mark.parametrize(
    ("key", "status", "says"),
    [
        ("not-a-key-" + "n" * 30, 401, "not accepted"),
        (BOT_KEY, 403, "lacks the &#39;read&#39; scope"),
    ],
)
def test_a_key_that_is_unknown_or_cannot_read_starts_no_session(http, key, status, says):
    answer = log_in(http, key)
    assert answer.status_code == status
    assert says in answer.text
    assert "execq_console" not in http.cookies
    assert key not in answer.text


def test_a_login_form_from_elsewhere_is_refused(http, console_url):
    # Given a login posted without the form's own cookie (another site's form)
    token = hidden(http.get("/console/login").text, "login_token")
    with httpx.Client(base_url=console_url) as other:
        answer = other.post("/console/login", data={"login_token": token, "api_key": OPERATOR_KEY})
    assert answer.status_code == 403
    assert "execq_console=" not in answer.headers.get("set-cookie", "")


# --- what the overview shows ----------------------------------------------------------------


def test_accounts_show_their_streams_cooldown_and_a_refused_key(http):
    from workers import redis_keys
    from workers.coordination import refuse_account
    from workers.exchange.ratelimit import set_cooldown
    from workers.observability.cluster import record_stream_alive
    from workers.redis_client import get_redis

    # Given a live orders stream and a silent tickers stream on binance, none on bybit,
    # binance cooling down after a 429 and bybit's key refused by the exchange
    record_stream_alive("binance", "orders")
    get_redis().hset(
        redis_keys.STREAMS_LAST_ALIVE,
        redis_keys.stream_field("binance", "tickers"),
        time.time() - 600,
    )
    set_cooldown("binance", 30)
    refuse_account("bybit", "invalid API key")
    html = logged_in(http)
    binance = re.search(r'<tr data-account="binance">(.*?)</tr>', html, re.S).group(1)
    bybit = re.search(r'<tr data-account="bybit">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r"orders \d+s</span>", binance)
    assert re.search(r"tickers 10m 0\ds stale", binance)
    assert re.search(r'class="bad">(29\.\d|30\.0) s<', binance)
    assert "no stream" in bybit
    assert "refused: invalid API key" in bybit
    assert "usable" in binance


def test_alerts_show_critical_ones_first(http):
    from workers.store.db import session_scope
    from workers.store.events import raise_alert

    with session_scope() as session:
        raise_alert(session, "order_unknown", "the older, critical one", severity="critical")
    with session_scope() as session:
        raise_alert(session, "stream_stale", "the newer warning", severity="warning")
    html = logged_in(http)
    assert html.index("the older, critical one") < html.index("the newer warning")


# --- CSRF, scopes, fields ---------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_an_action_without_the_sessions_csrf_token_does_nothing(http, token):
    logged_in(http)
    fields = {"state": "on", "reason": "csrf"}
    if token is not None:
        fields["csrf_token"] = token
    answer = http.post("/console/actions/kill_switch", data=fields)
    assert answer.status_code == 403
    assert "token does not match" in answer.text
    assert 'name="confirmation"' not in answer.text


def test_a_key_without_operate_is_refused_every_action(http):
    html = logged_in(http, VIEWER_KEY)
    csrf = hidden(html, "csrf_token")
    for kind, fields in (
        ("kill_switch", {"state": "on", "reason": "viewer"}),
        ("liquidate", {"reason": "viewer"}),
        ("cancel", {"client_order_id": "xqopen-anything"}),
    ):
        answer = http.post(f"/console/actions/{kind}", data={"csrf_token": csrf, **fields})
        assert answer.status_code == 403, kind
        assert "lacks the &#39;operate&#39; scope" in answer.text
    answer = http.post("/console/confirm", data={"csrf_token": csrf, "confirmation": "x"})
    assert answer.status_code == 403
    assert not kill_switch_on()
    assert events_of("kill_switch_on", "liquidation_requested", "cancel_requested") == []


@pytest.mark.parametrize(
    ("kind", "fields", "says"),
    [
        ("kill_switch", {"state": "maybe", "reason": "x"}, "state: must be"),
        ("kill_switch", {"state": "on", "reason": "  "}, "reason: is required"),
        ("kill_switch", {"state": "on", "reason": "a\nb"}, "reason: must be one line"),
        ("kill_switch", {"state": "on", "reason": "r" * 201}, "reason: is longer than 200"),
        ("kill_switch", {"state": "on", "reason": "x", "set_by": "me"}, "set_by: is not a field"),
        ("liquidate", {}, "reason: is required"),
        ("cancel", {"client_order_id": "<script>"}, "client_order_id: must be"),
        ("cancel", {"client_order_id": "xqopen-nosuchorder"}, "names no order execq knows"),
        ("reboot", {}, "No such action"),
    ],
)
def test_every_form_field_is_checked_on_the_server(http, kind, fields, says):
    logged_in(http)
    answer = propose(http, kind, **fields)
    assert answer.status_code in (404, 422), answer.text
    assert says in answer.text
    assert 'name="confirmation"' not in answer.text
    assert not kill_switch_on()


def test_a_finished_order_cannot_be_cancelled(http):
    from workers.store.db import session_scope

    with session_scope() as session:
        session.add(stored_order("xqopen-finished", "filled", booked="0.01"))
    logged_in(http)
    answer = propose(http, "cancel", client_order_id="xqopen-finished")
    assert answer.status_code == 422
    assert "already filled" in answer.text


def test_the_event_filter_is_checked(http):
    logged_in(http)
    answer = http.get("/console/events", params={"kind": "position", "id": "12 OR 1=1"})
    assert answer.status_code == 422
    assert "a position id is a number" in answer.text


# --- confirmations ------------------------------------------------------------------------------


def test_the_kill_switch_needs_a_confirmation_used_once_and_names_the_key(http):
    # Given an operator who asked for the kill switch
    logged_in(http)
    proposed = propose(http, "kill_switch", state="on", reason="exchange incident")
    assert proposed.status_code == 200
    assert "exchange incident" in proposed.text
    # Then nothing happened before the confirmation
    assert not kill_switch_on()
    # When it is confirmed
    done = confirm(http, proposed)
    assert done.status_code == 303
    # Then the switch is on, its event names the key, and the next page says so once
    from workers.coordination import kill_switch_state

    state = kill_switch_state()
    assert state.on and state.reason == "exchange incident"
    assert state.set_by == "api key operator (console)"
    [event] = events_of("kill_switch_on")
    assert event.payload["api_key"] == "operator"
    assert event.payload["source"] == "console"
    page = http.get("/console").text
    assert "Kill switch ON: exchange incident" in page
    assert "Kill switch ON: exchange incident" not in http.get("/console").text
    # And the same confirmation again does nothing
    again = confirm(http, proposed)
    assert again.status_code == 409
    assert len(events_of("kill_switch_on")) == 1


def test_a_confirmation_issued_to_another_session_does_nothing(http, console_url):
    logged_in(http)
    proposed = propose(http, "kill_switch", state="on", reason="mine")
    with httpx.Client(base_url=console_url, follow_redirects=False) as other:
        logged_in(other)
        answer = other.post(
            "/console/confirm",
            data={
                "csrf_token": hidden(other.get("/console").text, "csrf_token"),
                "confirmation": hidden(proposed.text, "confirmation"),
            },
        )
    assert answer.status_code == 409
    assert not kill_switch_on()


# --- cancel and liquidate, with a worker -------------------------------------------------------


def test_an_order_cancelled_from_the_console_ends_canceled_with_the_keys_event(http, worker, sim):
    from workers.producer import submit_limit_order
    from workers.store.orders import load_order

    # Given a buy resting far below the price
    price = Decimal(sim.price("binance", ETH))
    resting = submit_limit_order(
        f"console-{uuid.uuid4().hex[:10]}", "binance", ETH, "buy", "0.1", price * Decimal("0.8")
    ).get(timeout=30)
    assert resting["status"] == "open"
    client_order_id = resting["client_order_id"]
    html = logged_in(http)
    assert client_order_id in html
    # When the operator cancels it and confirms
    proposed = propose(http, "cancel", client_order_id=client_order_id)
    assert proposed.status_code == 200
    assert confirm(http, proposed).status_code == 303
    # Then the order ends canceled, and the request is an event naming the key
    wait_for(
        lambda: load_order(client_order_id).status == "canceled",
        30,
        message="the order was not canceled",
    )
    [requested] = events_of("cancel_requested")
    assert requested.client_order_id == client_order_id
    assert requested.payload["api_key"] == "operator"


def test_liquidate_all_from_the_console_closes_everything_and_names_the_key(http, worker, sim):
    from workers.producer import submit_market_order

    filled = submit_market_order(
        f"console-{uuid.uuid4().hex[:10]}", "binance", ETH, "buy", "0.1"
    ).get(timeout=30)
    assert filled["status"] == "filled"
    logged_in(http)
    proposed = propose(http, "liquidate", reason="drill")
    assert "Liquidate everything" in proposed.text
    assert confirm(http, proposed).status_code == 303

    wait_for(lambda: events_of("liquidation_summary"), 60, message="no liquidation summary")
    assert not [p for p in sim.positions() if Decimal(p["size"])]
    [requested] = events_of("liquidation_requested")
    assert requested.payload["api_key"] == "operator"
    [started] = events_of("liquidation_started")
    assert started.payload["liquidation_id"] == requested.payload["liquidation_id"]
    assert kill_switch_on()


# --- escaping -------------------------------------------------------------------------------


def store_hostile_order() -> None:
    """An order whose symbol, and an event whose metadata, hold HTML (``HOSTILE``)."""
    from workers.store.db import session_scope
    from workers.store.events import record_event

    with session_scope() as session:
        session.add(stored_order("xqopen-hostile", "unknown", symbol=HOSTILE[:64]))
        record_event(
            session,
            "signal_received",
            signal_id="hostile",
            client_order_id="xqopen-hostile",
            symbol=HOSTILE[:64],
            payload={"metadata": {"note": HOSTILE}},
        )


def test_values_from_an_exchange_or_a_producer_are_escaped(http):
    store_hostile_order()
    overview = logged_in(http)
    events = http.get("/console/events", params={"kind": "order", "id": "xqopen-hostile"}).text
    for html in (overview, events):
        assert HOSTILE not in html
        assert "&lt;img src=x onerror=" in html
