"""The HTTP API, driven over real HTTP: ``execq api`` as a subprocess, a real worker,
the simulator, PostgreSQL and Redis.

Every refusal is a problem-details answer and (once the caller is known) a
``signal_rejected`` event; nothing refused reaches the outbox or the exchange.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import wait_for
from workers.api.signatures import signed_headers

ETH = "ETH/USDT:USDT"
BOT_KEY = "bot-" + "b" * 40
READER_KEY = "reader-" + "r" * 40
TV_KEY = "tradingview-" + "t" * 40
SIGNER_KEY = "signer-" + "s" * 40
WEBHOOK_SECRET = "whsec_" + "c2lnbmVyLXNlY3JldC1ieXRlcy0wMTIzNDU2Nzg5"

API_KEYS = [
    {"name": "bot", "key": BOT_KEY, "scopes": ["signal", "read"]},
    {"name": "reader", "key": READER_KEY, "scopes": ["read"]},
    {"name": "tv", "key": TV_KEY, "scopes": ["signal"], "symbols": {"MYPERP": "BTC/USDT:USDT"}},
    {
        # Only the key's hash is configured; the producer signs instead of sending it.
        "name": "signer",
        "key_sha256": __import__("hashlib").sha256(SIGNER_KEY.encode()).hexdigest(),
        "webhook_secret": WEBHOOK_SECRET,
        "scopes": ["signal", "read"],
    },
]
API_ENV = {
    "EXECQ_API_KEYS": json.dumps(API_KEYS),
    # Ample: the rate limit has a test of its own with a server of its own.
    "EXECQ_API_RATE_LIMIT_PER_S": "1000",
    "EXECQ_API_RATE_LIMIT_BURST": "1000",
    "EXECQ_API_MAX_BODY_BYTES": "8192",
}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def api_url(database: str, redis_server: str, process_stack) -> Iterator[str]:
    url = process_stack.start_api(name="api-tests", extra_env=API_ENV)
    yield url
    process_stack.processes["api-tests"].stop()


@pytest.fixture
def api(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=10) as client:
        yield client


def bearer(key: str = BOT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_id(prefix: str = "api") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def order(signal_id: str | None = None, **changes: Any) -> dict[str, Any]:
    body = {
        "signal_id": signal_id or new_id(),
        "exchange": "binance",
        "symbol": ETH,
        "side": "buy",
        "amount": "0.1",
    }
    return {**body, **changes}


def outbox_count(signal_id: str | None = None) -> int:
    from workers.store.db import session_scope
    from workers.store.models import Signal

    query = select(func.count()).select_from(Signal)
    if signal_id is not None:
        query = query.where(Signal.signal_id == signal_id)
    with session_scope() as session:
        return session.scalar(query)


def refusal_events(**where: Any) -> list[Any]:
    from workers.store.db import session_scope
    from workers.store.models import Event

    query = select(Event).where(Event.type.in_(("signal_rejected", "signal_conflict")))
    for name, value in where.items():
        query = query.where(getattr(Event, name) == value)
    with session_scope() as session:
        return list(session.scalars(query.order_by(Event.id)))


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["type"] == f"urn:execq:problem:{slug}"
    assert problem["status"] == status
    assert problem["title"]
    return problem


def final_state(api: httpx.Client, status_url: str, timeout_s: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        state = api.get(status_url, headers=bearer(READER_KEY)).json()
        return state if state["state"] in ("done", "refused") else None

    return wait_for(done, timeout_s, interval_s=0.1, message="the signal did not finish")


# --- accepted, executed once, visible ------------------------------------------------------


def test_a_signal_is_accepted_executed_once_and_visible_at_its_status_url(api, worker, sim):
    # Given a producer's key with the signal scope
    body = order()
    # When it posts a market order
    response = api.post("/v1/signals", json=body, headers=bearer())
    # Then it is accepted at once, with its ids and status URL
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["signal_id"] == body["signal_id"]
    assert accepted["client_order_id"].startswith("xqopen-")
    assert accepted["enqueued"] is True
    assert response.headers["location"] == accepted["status_url"]
    # And the worker executes it once; its state shows the fill and its events
    state = final_state(api, accepted["status_url"])
    assert state["state"] == "done"
    [filled] = state["orders"]
    assert filled["status"] == "filled"
    assert filled["filled"] == "0.1"
    assert filled["average_price"] is not None
    assert filled["client_order_id"] == accepted["client_order_id"]
    assert "order_filled" in {event["type"] for event in state["events"]}
    assert len(sim.orders_for(accepted["client_order_id"])) == 1
    # And it went through the outbox like a Python producer's signal
    assert outbox_count(body["signal_id"]) == 1


def test_a_limit_order_takes_price_and_time_in_force(api, worker, sim):
    price = sim.price("binance", ETH)
    body = order(price=price, time_in_force="IOC")
    accepted = api.post("/v1/signals", json=body, headers=bearer()).json()
    state = final_state(api, accepted["status_url"])
    [limit] = state["orders"]
    assert limit["order_type"] == "limit"
    assert limit["time_in_force"] == "IOC"


def test_the_idempotency_key_header_names_a_signal_without_signal_id(api, worker, sim):
    key = new_id("idem")
    body = order()
    del body["signal_id"]
    response = api.post("/v1/signals", json=body, headers={**bearer(), "Idempotency-Key": key})
    assert response.status_code == 202, response.text
    assert response.json()["signal_id"] == key


def test_a_signal_id_with_a_slash_has_a_working_status_url(api, worker, sim):
    signal_id = f"bot/{uuid.uuid4().hex[:8]}/eth 1"
    accepted = api.post("/v1/signals", json=order(signal_id), headers=bearer()).json()
    assert accepted["status_url"] == "/v1/signals/" + quote(signal_id, safe="")
    assert final_state(api, accepted["status_url"])["signal_id"] == signal_id


# --- idempotency ---------------------------------------------------------------------------


def test_the_same_key_and_order_again_answers_200_with_the_first_orders_state(api, worker, sim):
    body = order()
    first = api.post("/v1/signals", json=body, headers=bearer())
    assert first.status_code == 202
    final_state(api, first.json()["status_url"])
    # When the producer sends it again (0.10 is the same amount as 0.1)
    again = api.post("/v1/signals", json={**body, "amount": "0.10"}, headers=bearer())
    # Then it gets the first order's state, and the exchange saw one order
    assert again.status_code == 200, again.text
    state = again.json()
    assert state["state"] == "done"
    assert [o["client_order_id"] for o in state["orders"]] == [first.json()["client_order_id"]]
    assert len(sim.orders_for(first.json()["client_order_id"])) == 1
    assert outbox_count(body["signal_id"]) == 1


def test_the_same_key_with_another_order_is_a_422_conflict_with_its_event(api, worker, sim):
    body = order()
    assert api.post("/v1/signals", json=body, headers=bearer()).status_code == 202
    response = api.post("/v1/signals", json={**body, "amount": "0.2"}, headers=bearer())
    problem = assert_problem(response, 422, "signal-conflict")
    assert problem["fields"] == ["amount"]
    assert problem["signal_id"] == body["signal_id"]
    [event] = refusal_events(signal_id=body["signal_id"])
    assert event.type == "signal_conflict"
    assert outbox_count(body["signal_id"]) == 1


def test_a_header_key_and_a_different_signal_id_in_the_body_are_refused(api, db):
    response = api.post(
        "/v1/signals", json=order("one"), headers={**bearer(), "Idempotency-Key": "two"}
    )
    problem = assert_problem(response, 422, "invalid-signal")
    assert problem["field"] == "signal_id"
    assert outbox_count() == 0


def test_two_concurrent_identical_requests_make_one_order(api_url, worker, sim):
    # Given eight producers' retries of one signal, all at once
    body = order()
    barrier = threading.Barrier(8)
    answers: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=api_url, timeout=10) as client:
            barrier.wait()
            answers.append(client.post("/v1/signals", json=body, headers=bearer()))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly one is accepted, the others see it (200) or are told to ask again (409)
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses.count(202) == 1, statuses
    assert set(statuses) <= {200, 202, 409}, statuses
    for answer in answers:
        if answer.status_code == 409:
            assert answer.headers["retry-after"] == "1"
    # And the exchange gets one order
    accepted = next(answer for answer in answers if answer.status_code == 202).json()
    with httpx.Client(base_url=api_url, timeout=10) as client:
        assert final_state(client, accepted["status_url"])["state"] == "done"
    assert len(sim.orders_for(accepted["client_order_id"])) == 1
    assert outbox_count(body["signal_id"]) == 1


def test_a_request_while_the_first_is_being_recorded_is_answered_409(api_url, api, db, redis_clean):
    from sqlalchemy import text

    from workers.execution.client_ids import client_order_id
    from workers.redis_client import get_redis
    from workers.redis_keys import api_recording
    from workers.store.db import get_engine

    body = order()
    key = client_order_id(body["signal_id"], "open")
    # Given a transaction that holds the signal's key in the outbox, uncommitted
    with get_engine().connect() as holder:
        transaction = holder.begin()
        holder.execute(
            text(
                "INSERT INTO signals (task_id, task_name, signal_id, client_order_id, "
                "idempotency_key, kwargs, sends) VALUES (:task, 'execute_market_order', :sid, "
                ":cid, :cid, CAST(:kwargs AS jsonb), 1)"
            ),
            {
                "task": str(uuid.uuid4()),
                "sid": body["signal_id"],
                "cid": key,
                "kwargs": json.dumps(body),
            },
        )
        # When a first request records that signal (it waits on the holder)
        first: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: first.append(
                httpx.post(f"{api_url}/v1/signals", json=body, headers=bearer(), timeout=10)
            )
        )
        sender.start()
        wait_for(lambda: get_redis().exists(api_recording(key)), 10, interval_s=0.02)
        # Then a second request with the same key is told to come back
        second = api.post("/v1/signals", json=body, headers=bearer())
        problem = assert_problem(second, 409, "signal-in-progress")
        assert second.headers["retry-after"] == "1"
        assert problem["signal_id"] == body["signal_id"]
        transaction.rollback()
    sender.join()
    # And the first, once the holder gave way, recorded it
    assert first[0].status_code == 202, first[0].text
    assert outbox_count(body["signal_id"]) == 1


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"exchange": "kraken"}, "exchange"),
        ({"symbol": "ETHUSDT"}, "symbol"),
        ({"amount": 0.1}, "amount"),
        ({"amount": "-1"}, "amount"),
        ({"side": "long"}, "side"),
        ({"time_in_force": "GTC"}, "time_in_force"),
        ({"leverage": 10}, "leverage"),
        ({"signal_id": "  "}, "signal_id"),
        ({"metadata": "x"}, "metadata"),
    ],
)
def test_an_invalid_signal_is_a_422_naming_the_field_with_its_event(api, db, sim, change, field):
    body = order(**change)
    response = api.post("/v1/signals", json=body, headers=bearer())
    problem = assert_problem(response, 422, "invalid-signal")
    assert problem["field"] == field
    assert problem["detail"].startswith(f"{field}: ")
    events = refusal_events(type="signal_rejected")
    assert [event.payload["field"] for event in events] == [field]
    assert outbox_count() == 0
    assert sim.ledger() == []


def test_a_missing_argument_is_named(api, db):
    body = order()
    del body["amount"]
    problem = assert_problem(
        api.post("/v1/signals", json=body, headers=bearer()), 422, "invalid-signal"
    )
    assert problem["detail"] == "amount: is required"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"{not json", "is not valid JSON"),
        (b"", "is empty"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "is not UTF-8"),
        (b"[" * 4000 + b"]" * 4000, "nested too deeply"),
    ],
)
def test_a_body_that_is_no_json_object_is_a_400_with_its_event(api, db, content, says):
    response = api.post("/v1/signals", content=content, headers=bearer())
    problem = assert_problem(response, 400, "invalid-json")
    assert says in problem["detail"]
    [event] = refusal_events()
    assert event.payload["field"] == "body"
    assert event.payload["api_key"] == "bot"


def test_a_body_over_the_cap_is_a_413_with_its_event(api, db):
    body = order(metadata={"note": "x" * 9000})
    response = api.post("/v1/signals", json=body, headers=bearer())
    assert_problem(response, 413, "body-too-large")
    [event] = refusal_events()
    assert event.payload["field"] == "body"
    assert outbox_count() == 0


def test_a_chunked_body_over_the_cap_is_a_413(api, db):
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 1000

    response = api.post("/v1/signals", content=chunks(), headers=bearer())
    assert_problem(response, 413, "body-too-large")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {BOT_KEY}"}],
)
def test_a_missing_or_unknown_key_is_a_401_and_records_nothing(api, db, headers):
    response = api.post("/v1/signals", json=order(), headers=headers)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert refusal_events() == []
    assert outbox_count() == 0


def test_a_key_without_the_scope_is_a_403(api, db):
    response = api.post("/v1/signals", json=order(), headers=bearer(READER_KEY))
    problem = assert_problem(response, 403, "forbidden")
    assert "signal" in problem["detail"]
    assert outbox_count() == 0
    assert_problem(api.get("/v1/signals/x", headers=bearer(TV_KEY)), 403, "forbidden")


def test_an_unknown_signal_is_a_404_and_unknown_paths_are_problems_too(api, db):
    assert_problem(api.get("/v1/signals/nothing-here", headers=bearer()), 404, "not-found")
    assert_problem(api.get("/v1/nowhere", headers=bearer()), 404, "not-found")
    assert_problem(api.delete("/v1/signals", headers=bearer()), 405, "method-not-allowed")


def test_a_signal_refused_at_the_door_shows_why_at_its_status_url(api, db):
    body = order(amount="0")
    api.post("/v1/signals", json=body, headers=bearer())
    state = api.get(f"/v1/signals/{body['signal_id']}", headers=bearer()).json()
    assert state["state"] == "refused"
    assert state["refusals"][0]["field"] == "amount"


def test_an_unlisted_symbol_is_refused_by_the_worker_and_never_reaches_the_exchange(
    api, worker, sim
):
    # A well-formed symbol the exchange does not list: the worker's market check refuses it
    accepted = api.post("/v1/signals", json=order(symbol="NOPE/USDT:USDT"), headers=bearer()).json()
    state = final_state(api, accepted["status_url"])
    assert state["state"] == "refused"
    assert state["refusals"][0]["field"] == "symbol"
    assert sim.ledger() == []


# --- rate limit ------------------------------------------------------------------------------


def test_a_key_over_its_rate_is_told_when_to_come_back(process_stack, db, redis_clean):
    url = process_stack.start_api(
        name="api-rate",
        extra_env={
            **API_ENV,
            "EXECQ_API_RATE_LIMIT_PER_S": "0.2",
            "EXECQ_API_RATE_LIMIT_BURST": "2",
        },
    )
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            answers = [client.get("/v1/signals/x", headers=bearer()) for _ in range(3)]
            # Another key has a budget of its own
            other = client.get("/v1/signals/x", headers=bearer(READER_KEY))
    finally:
        process_stack.processes["api-rate"].stop()
    assert [answer.status_code for answer in answers] == [404, 404, 429]
    assert_problem(answers[2], 429, "rate-limited")
    assert 1 <= int(answers[2].headers["retry-after"]) <= 5
    assert other.status_code == 404


# --- Standard Webhooks signatures ------------------------------------------------------------


def signed(body: bytes, *, secret: str = WEBHOOK_SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = int(at if at is not None else time.time())
    return {
        "content-type": "application/json",
        **signed_headers(secret, f"msg_{uuid.uuid4().hex}", timestamp, body),
    }


def test_a_signed_request_is_accepted_without_sending_a_key(api, worker, sim):
    content = json.dumps(order()).encode()
    response = api.post("/v1/signals", content=content, headers=signed(content))
    assert response.status_code == 202, response.text
    assert final_state(api, response.json()["status_url"])["state"] == "done"


@pytest.mark.parametrize(
    "tamper",
    ["body", "secret", "stale", "missing-id"],
)
def test_a_bad_signature_is_a_401(api, db, tamper):
    content = json.dumps(order()).encode()
    headers = signed(content)
    if tamper == "body":
        content = content.replace(b'"0.1"', b'"9.1"')
    elif tamper == "secret":
        headers = signed(content, secret="whsec_" + "b3RoZXItc2VjcmV0LWJ5dGVzLTAxMjM0NTY3ODk=")
    elif tamper == "stale":
        headers = signed(content, at=time.time() - 600)
    else:
        del headers["webhook-id"]
    response = api.post("/v1/signals", content=content, headers=headers)
    assert_problem(response, 401, "bad-signature")
    assert outbox_count() == 0


# --- TradingView ------------------------------------------------------------------------------


def alert(**changes: Any) -> dict[str, Any]:
    body = {
        "secret": TV_KEY,
        "exchange": "binance",
        "ticker": "BINANCE:ETHUSDT.P",
        "action": "buy",
        "contracts": "0.1",
        "order_id": "Long",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return {**body, **changes}


def post_alert(api: httpx.Client, body: dict[str, Any] | str) -> httpx.Response:
    text = body if isinstance(body, str) else json.dumps(body)
    # TradingView sends the message as text/plain
    return api.post(
        "/v1/webhooks/tradingview", content=text, headers={"content-type": "text/plain"}
    )


def test_a_tradingview_alert_is_one_signal_however_often_it_is_retried(api, worker, sim):
    # Given an alert message rendered from the template
    message = alert(timestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    # When TradingView posts it, then retries it
    first = post_alert(api, message)
    again = post_alert(api, message)
    # Then the first is accepted with a signal id from the order id and time
    assert first.status_code == 202, first.text
    accepted = first.json()
    assert accepted["signal_id"].startswith("tv-tv-Long-")
    assert again.status_code in (200, 409)
    # And ETH's perpetual is bought once
    state = final_state(api, accepted["status_url"])
    [filled] = state["orders"]
    assert (filled["symbol"], filled["side"], filled["filled"]) == (ETH, "buy", "0.1")
    assert len(sim.orders_for(accepted["client_order_id"])) == 1


def test_a_tradingview_alert_with_a_mapped_ticker_and_a_number_amount(api, worker, sim):
    text = json.dumps(alert(ticker="MYPERP", action="sell", order_id="Short"))
    text = text.replace('"contracts": "0.1"', '"contracts": 0.005')
    accepted = post_alert(api, text).json()
    [filled] = final_state(api, accepted["status_url"])["orders"]
    assert (filled["symbol"], filled["side"], filled["filled"]) == (
        "BTC/USDT:USDT",
        "sell",
        "0.005",
    )


def test_a_stale_alert_is_refused_with_its_event(api, db, sim):
    old = (datetime.now(UTC) - timedelta(seconds=301)).strftime("%Y-%m-%dT%H:%M:%SZ")
    problem = assert_problem(post_alert(api, alert(timestamp=old)), 422, "stale-alert")
    assert problem["field"] == "timestamp"
    [event] = refusal_events()
    assert event.payload["source"] == "tradingview"
    assert event.payload["api_key"] == "tv"
    assert outbox_count() == 0


@pytest.mark.parametrize(
    ("change", "status", "slug"),
    [
        ({"secret": "wrong"}, 401, "unauthorized"),
        ({"secret": None}, 401, "unauthorized"),
        ({"secret": READER_KEY}, 403, "forbidden"),
        ({"ticker": "BINANCE:BTCEUR"}, 422, "invalid-signal"),
        ({"action": "hold"}, 422, "invalid-signal"),
        ({"contracts": "lots"}, 422, "invalid-signal"),
        ({"timestamp": "yesterday"}, 422, "invalid-signal"),
        ({"exchange": "nowhere"}, 422, "invalid-signal"),
        ({"extra": 1}, 422, "invalid-signal"),
    ],
)
def test_a_bad_alert_is_refused(api, db, sim, change, status, slug):
    body = {name: value for name, value in alert(**change).items() if value is not None}
    assert_problem(post_alert(api, body), status, slug)
    assert outbox_count() == 0
    assert len(refusal_events()) == (1 if status == 422 else 0)


def test_an_alert_that_is_no_json_is_a_400(api, db):
    assert_problem(post_alert(api, "buy ETH now"), 400, "invalid-json")


def test_the_openapi_document_and_docs_are_served(api):
    document = api.get("/openapi.json").json()
    assert {"/v1/signals", "/v1/signals/{signal_id}", "/v1/webhooks/tradingview"} <= set(
        document["paths"]
    )
    assert "OrderArguments" in document["components"]["schemas"]
    assert api.get("/docs").status_code == 200


def test_the_key_never_appears_in_the_api_log(api, process_stack, db):
    api.post("/v1/signals?key=" + BOT_KEY, json=order(), headers=bearer())
    api.post("/v1/signals", json=order(), headers=bearer("x" * 30))
    post_alert(api, alert(timestamp="stale"))
    log = process_stack.processes["api-tests"].log_tail(400)
    assert "key=bot" in log
    for secret in (BOT_KEY, TV_KEY, "x" * 30):
        assert secret not in log
