"""A few thousand random requests against the running API: never a 5xx, every refusal a
problem-details document, nothing recorded or on the exchange but what was accepted.

Requests are drawn by hypothesis: random bytes and random JSON as bodies; valid
signals and TradingView alerts with one field replaced by any JSON value; random
headers (keys, idempotency keys, content types, Standard Webhooks headers, some
correctly signed); random paths and methods.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.integration.test_api import (
    API_ENV,
    BOT_KEY,
    PROBLEM,
    READER_KEY,
    TV_KEY,
    WEBHOOK_SECRET,
    alert,
    order,
)
from workers.api.signatures import signed_headers

REQUESTS = 3000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
# h11 refuses header values with leading or trailing white space
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
    str.strip
)
keys = st.sampled_from([None, BOT_KEY, READER_KEY, TV_KEY, "wrong", ""]) | header_text


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    body = dict(base)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*body, "extra", "price", "metadata", "leg", "secret"]))
        if draw(st.booleans()):
            body[name] = draw(json_values)
        else:
            body.pop(name, None)
    return body


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["signal", "signal", "alert", "status", "anywhere"]))
    headers: dict[str, str] = {}
    key = draw(keys)
    if key is not None:
        headers["Authorization"] = f"Bearer {key}".strip()
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(header_text)
    if draw(st.booleans()):
        headers["Content-Type"] = draw(
            st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"])
            | header_text
        )
    if kind == "status":
        return {"method": "GET", "url": "/v1/signals/" + draw(header_text), "headers": headers}
    if kind == "anywhere":
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
        path = "/" + draw(header_text).lstrip("/")
        return {
            "method": method,
            "url": path,
            "headers": headers,
            "content": draw(st.binary(max_size=64)),
        }
    base = order() if kind == "signal" else alert()
    shape = draw(st.sampled_from(["mutated", "mutated", "json", "bytes", "big"]))
    if shape == "mutated":
        content = json.dumps(draw(mutated(base))).encode()
    elif shape == "json":
        content = json.dumps(draw(json_values)).encode()
    elif shape == "bytes":
        content = draw(st.binary(max_size=200))
    else:
        content = b'{"signal_id": "' + b"x" * draw(st.integers(8000, 20000)) + b'"}'
    if kind == "signal" and draw(st.integers(0, 5)) == 0:
        # Standard Webhooks headers, signed right or not at all
        at = int(time.time()) + draw(st.sampled_from([0, -1000, 1000]))
        signed = signed_headers(WEBHOOK_SECRET, draw(header_text) or "m", at, content)
        if draw(st.booleans()):
            signed["webhook-signature"] = draw(header_text)
        headers.update(signed)
    url = "/v1/signals" if kind == "signal" else "/v1/webhooks/tradingview"
    return {"method": "POST", "url": url, "headers": headers, "content": content}


@pytest.fixture(scope="module")
def fuzz_url(database: str, redis_server: str, process_stack) -> Iterator[str]:
    url = process_stack.start_api(name="api-fuzz", extra_env=API_ENV)
    yield url
    process_stack.processes["api-fuzz"].stop()


def test_random_requests_never_get_a_5xx_and_refusals_are_problem_details(fuzz_url, worker, sim):
    accepted: set[str] = set()
    accepted_orders: set[str] = set()
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=fuzz_url, timeout=10) as client:

        @settings(
            max_examples=REQUESTS,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(requests())
        def one_request(request: dict[str, Any]) -> None:
            response = client.request(**request)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (request, response.text)
            if response.status_code >= 400:
                assert response.headers["content-type"].startswith(PROBLEM), response.text
                assert response.json()["status"] == response.status_code
            elif response.status_code == 202:
                accepted.add(response.json()["signal_id"])
                accepted_orders.add(response.json()["client_order_id"])

        one_request()

    from workers.store.db import session_scope
    from workers.store.models import Signal

    with session_scope() as session:
        recorded = set(session.scalars(select(Signal.signal_id)))
        assert session.scalar(select(func.count()).select_from(Signal)) == len(recorded)
    # Only what was answered 202 is in the outbox, and only that reached the exchange
    assert recorded == accepted
    assert {row["clientOrderId"] for row in sim.ledger()} <= accepted_orders
    assert sum(statuses.values()) >= REQUESTS
    # The refusals were many kinds, not one
    assert {400, 401, 404, 413, 422} <= set(statuses), statuses
