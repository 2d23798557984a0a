"""Bad input gets the exchange's own error answer, never a traceback, and the simulator keeps serving."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sim.conftest import Simulator

BINANCE_KEY = {"X-MBX-APIKEY": "sim-key"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def signed() -> str:
    """A Binance timestamp and signature for a request sent now (inside its recvWindow)."""
    return f"timestamp={now_ms()}&signature=" + "a" * 64


def bybit_auth() -> dict[str, str]:
    return {
        "X-BAPI-API-KEY": "sim-key",
        "X-BAPI-TIMESTAMP": str(now_ms()),
        "X-BAPI-SIGN": "ab" * 32,
    }


def okx_auth() -> dict[str, str]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"
    return {
        "OK-ACCESS-KEY": "sim-key",
        "OK-ACCESS-PASSPHRASE": "sim-passphrase",
        "OK-ACCESS-TIMESTAMP": stamp,
        "OK-ACCESS-SIGN": "a" * 43 + "=",
        "Content-Type": "application/json",
    }


def binance_error(response) -> tuple[int, int, str]:
    body = response.json()
    return response.status_code, body["code"], body["msg"]


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ("side=BUY&type=MARKET&quantity=1", -1102, "'symbol'"),
        ("symbol=BTCUSDT&type=MARKET&quantity=1", -1102, "'side'"),
        ("symbol=BTCUSDT&side=UP&type=MARKET&quantity=1", -1117, "Invalid side."),
        ("symbol=BTCUSDT&side=BUY&type=SWAP&quantity=1", -1116, "Invalid orderType."),
        ("symbol=BTCUSDT&side=BUY&type=MARKET", -1102, "'quantity'"),
        ("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=lots", -1100, "'quantity'"),
        ("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=-1", -1100, "'quantity'"),
        ("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0", -4003, "Quantity"),
        ("symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=0.01&price=1", -1102, "'timeInForce'"),
        ("symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=0.01&timeInForce=GTC", -1102, "'price'"),
        ("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01&reduceOnly=maybe", -1130, "reduceOnly"),
        (
            "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01&positionSide=LONG",
            -4061,
            "position side",
        ),
        ("symbol=BTCUSDT&side=BUY&type=STOP_MARKET&quantity=0.01", -4120, "Algo Order"),
        ("symbol=NOPE&side=BUY&type=MARKET&quantity=1", -1121, "Invalid symbol."),
        ("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=1e3", -1100, "'quantity'"),
    ],
)
def test_binance_malformed_orders_get_binance_errors(sim: Simulator, body, code, message):
    response = sim.raw(
        "POST",
        "/fapi/v1/order",
        data=f"{body}&{signed()}",
        headers={**BINANCE_KEY, "Content-Type": "application/x-www-form-urlencoded"},
    )
    status, got_code, got_message = binance_error(response)
    assert (status, got_code) == (400, code)
    assert message in got_message
    assert sim.ledger() == []


def test_binance_lookup_without_any_id(sim: Simulator):
    response = sim.raw("GET", f"/fapi/v1/order?symbol=BTCUSDT&{signed()}", headers=BINANCE_KEY)
    assert binance_error(response)[:2] == (400, -1102)
    response = sim.raw(
        "GET", f"/fapi/v1/order?symbol=BTCUSDT&orderId=abc&{signed()}", headers=BINANCE_KEY
    )
    assert binance_error(response)[:2] == (400, -1100)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "1"}', "category"),
        ('{"category": "linear", "side": "Buy", "orderType": "Market", "qty": "1"}', "symbol"),
        (
            '{"category": "linear", "symbol": "BTCUSDT", "side": "Up", "orderType": "Market", "qty": "1"}',
            "side",
        ),
        (
            '{"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Stop", "qty": "1"}',
            "orderType",
        ),
        (
            '{"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market"}',
            "qty",
        ),
        (
            '{"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "x"}',
            "qty",
        ),
        (
            '{"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "1", "positionIdx": 1}',
            "position idx",
        ),
        (
            '{"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "1", "orderLinkId": "has space"}',
            "orderLinkId",
        ),
        (
            '{"category": "spot", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "1"}',
            "linear",
        ),
    ],
)
def test_bybit_malformed_orders_get_bybit_errors(sim: Simulator, body, message):
    response = sim.raw("POST", "/v5/order/create", data=body, headers=bybit_auth())
    assert response.status_code == 200
    answer = response.json()
    assert answer["retCode"] == 10001
    assert message in answer["retMsg"]
    assert set(answer) == {"retCode", "retMsg", "result", "retExtInfo", "time"}


@pytest.mark.parametrize(
    ("path", "body", "code", "message"),
    [
        ("/api/v5/trade/order", "{not json", "50002", "JSON syntax error"),
        ("/api/v5/trade/order", "", "50000", "Body for POST request cannot be empty."),
        ("/api/v5/trade/order", '{"tdMode": "cross"}', "50014", "instId"),
        (
            "/api/v5/trade/order",
            '{"instId": "NOPE-USDT-SWAP", "tdMode": "cross"}',
            "51001",
            "doesn't exist",
        ),
        ("/api/v5/trade/order", '{"instId": "BTC-USDT-SWAP", "side": "buy"}', "50014", "tdMode"),
        (
            "/api/v5/trade/order",
            '{"instId": "BTC-USDT-SWAP", "tdMode": "isolated", "side": "buy"}',
            "51000",
            "tdMode",
        ),
        (
            "/api/v5/trade/order",
            '{"instId": "BTC-USDT-SWAP", "tdMode": "cross", "side": "up", "ordType": "market", "sz": "1"}',
            "51000",
            "side",
        ),
        (
            "/api/v5/trade/order",
            '{"instId": "BTC-USDT-SWAP", "tdMode": "cross", "side": "buy", "ordType": "market", "sz": "1", "posSide": "long"}',
            "51000",
            "posSide",
        ),
        (
            "/api/v5/trade/order",
            '{"instId": "BTC-USDT-SWAP", "tdMode": "cross", "side": "buy", "ordType": "trigger", "sz": "1"}',
            "51000",
            "ordType",
        ),
        (
            "/api/v5/trade/order",
            '{"instId": "BTC-USDT-SWAP", "tdMode": "cross", "side": "buy", "ordType": "market"}',
            "50014",
            "sz",
        ),
        (
            "/api/v5/trade/order",
            '{"instId": "BTC-USDT-SWAP", "tdMode": "cross", "side": "buy", "ordType": "market", "sz": "lots"}',
            "51000",
            "sz",
        ),
        (
            "/api/v5/trade/order",
            '{"instId": "BTC-USDT-SWAP", "tdMode": "cross", "side": "buy", "ordType": "market", "sz": "1", "clOrdId": "has-dash"}',
            "51000",
            "clOrdId",
        ),
        (
            "/api/v5/trade/order",
            '{"instId": "BTC-USDT-SWAP", "tdMode": "cross", "side": "buy", "ordType": "market", "sz": "1", "attachAlgoOrds": [{"slTriggerPx": "1"}]}',
            "51000",
            "attachAlgoOrds",
        ),
        ("/api/v5/trade/batch-orders", "[]", "50014", "data"),
        ("/api/v5/trade/batch-orders", "[1, 2]", "50002", "JSON"),
        ("/api/v5/trade/cancel-order", '{"instId": "BTC-USDT-SWAP"}', "51407", "order ID"),
    ],
)
def test_okx_malformed_requests_get_okx_errors(sim: Simulator, path, body, code, message):
    response = sim.raw("POST", path, data=body, headers=okx_auth())
    answer = response.json()
    assert answer["code"] == code, answer
    assert message in answer["msg"]
    assert set(answer) == {"code", "data", "msg"}
    assert sim.ledger() == []


def test_unknown_endpoints_are_404_pages(sim: Simulator):
    assert sim.raw("GET", "/fapi/v9/teleport").status_code == 404
    assert sim.raw("PUT", "/v5/order/create").status_code == 404
    assert sim.raw("GET", "/api/v5/trade/teleport").status_code == 404
    assert sim.raw("GET", "/nothing").status_code == 404
    assert sim.raw("GET", "/_sim/nothing").status_code == 404


def test_admin_api_refuses_malformed_requests(sim: Simulator):
    cases = [
        ("POST", "/_sim/prices", {"symbol": "BTC/USDT:USDT"}),
        ("POST", "/_sim/prices", {"symbol": "NOPE/USDT:USDT", "price": "1"}),
        ("POST", "/_sim/prices", {"symbol": "BTC/USDT:USDT", "price": "-5"}),
        ("POST", "/_sim/prices", {"symbol": "BTC/USDT:USDT", "walk": {"steps": -1}}),
        ("POST", "/_sim/positions", {"exchange": "kraken", "symbol": "BTC/USDT:USDT", "size": "1"}),
        (
            "POST",
            "/_sim/positions",
            {"exchange": "binance", "symbol": "BTC/USDT:USDT", "size": "x"},
        ),
        (
            "POST",
            "/_sim/positions",
            {"exchange": "binance", "symbol": "BTC/USDT:USDT", "size": "0.0001"},
        ),
        ("POST", "/_sim/reset", {"seed": "seven"}),
        ("POST", "/_sim/faults", {"rules": "all"}),
    ]
    for method, path, payload in cases:
        response = sim.raw(method, path, json=payload)
        assert response.status_code == 400, (path, payload)
        assert response.json()["error"]
    assert sim.raw("POST", "/_sim/faults", data="{oops").status_code == 400


PATHS = st.sampled_from(
    [
        ("POST", "/fapi/v1/order"),
        ("GET", "/fapi/v1/order"),
        ("DELETE", "/fapi/v1/order"),
        ("GET", "/fapi/v1/openOrders"),
        ("GET", "/fapi/v1/allOrders"),
        ("GET", "/fapi/v3/positionRisk"),
        ("GET", "/fapi/v1/ticker/24hr"),
        ("POST", "/v5/order/create"),
        ("POST", "/v5/order/cancel"),
        ("GET", "/v5/order/realtime"),
        ("GET", "/v5/order/history"),
        ("GET", "/v5/position/list"),
        ("GET", "/v5/market/tickers"),
        ("POST", "/api/v5/trade/order"),
        ("POST", "/api/v5/trade/cancel-order"),
        ("GET", "/api/v5/trade/order"),
        ("GET", "/api/v5/trade/orders-pending"),
        ("GET", "/api/v5/trade/orders-history"),
        ("GET", "/api/v5/account/positions"),
        ("GET", "/api/v5/public/instruments"),
        ("GET", "/api/v5/market/tickers"),
    ]
)
KEYS = st.sampled_from(
    [
        "symbol", "side", "type", "quantity", "price", "timeInForce", "orderId",
        "origClientOrderId", "newClientOrderId", "reduceOnly", "limit", "category",
        "orderType", "qty", "orderLinkId", "settleCoin", "cursor", "openOnly", "startTime",
        "instId", "instType", "tdMode", "ordType", "sz", "px", "clOrdId", "ordId", "state",
        "after", "before", "begin",
    ]
)  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(
        ["BTCUSDT", "BUY", "Sell", "MARKET", "Limit", "linear", "GTC", "true", "0"]
        + ["BTC-USDT-SWAP", "SWAP", "cross", "buy", "market", "limit", "filled", "live"]
    ),
    st.text(max_size=12),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)
JSON_VALUES = st.one_of(
    VALUES,
    st.integers(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=PATHS, params=st.dictionaries(KEYS, VALUES, max_size=8))
def test_random_requests_never_cause_an_internal_error(sim: Simulator, route, params):
    method, path = route
    if path.startswith("/fapi"):
        response = sim.raw(
            method,
            path,
            params={**params, "timestamp": str(now_ms()), "signature": "a" * 64},
            headers=BINANCE_KEY,
        )
        assert response.status_code < 500, response.text
        body = response.json()
        assert isinstance(body, list) or "code" not in body or body["code"] < 0
    elif path.startswith("/api/v5"):
        if method == "POST":
            response = sim.raw(method, path, data=json.dumps(params), headers=okx_auth())
        else:
            response = sim.raw(method, path, params=params, headers=okx_auth())
        assert response.status_code < 500, response.text
        assert response.json()["code"] != "50026", response.text
    else:
        if method == "POST":
            response = sim.raw(method, path, data=json.dumps(params), headers=bybit_auth())
        else:
            response = sim.raw(method, path, params=params, headers=bybit_auth())
        assert response.status_code == 200, response.text
        assert response.json()["retCode"] != 10016, response.text


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/v5/order/create", "/v5/order/cancel", "/v5/position/set-leverage"]),
    body=st.dictionaries(KEYS, JSON_VALUES, max_size=8),
)
def test_random_bybit_json_bodies_never_cause_an_internal_error(sim: Simulator, path, body):
    response = sim.raw("POST", path, data=json.dumps(body), headers=bybit_auth())
    assert response.status_code == 200, response.text
    assert response.json()["retCode"] != 10016, response.text


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(
        ["/api/v5/trade/order", "/api/v5/trade/batch-orders", "/api/v5/trade/cancel-order"]
    ),
    body=st.one_of(
        st.dictionaries(KEYS, JSON_VALUES, max_size=8),
        st.lists(st.dictionaries(KEYS, JSON_VALUES, max_size=8), max_size=3),
    ),
)
def test_random_okx_json_bodies_never_cause_an_internal_error(sim: Simulator, path, body):
    response = sim.raw("POST", path, data=json.dumps(body), headers=okx_auth())
    assert response.status_code < 500, response.text
    assert response.json()["code"] != "50026", response.text


def test_an_oversized_body_is_refused(sim: Simulator):
    response = sim.raw(
        "POST", "/v5/order/create", data="x" * (2 * 1024 * 1024), headers=bybit_auth()
    )
    assert response.status_code == 413


ADMIN_POSTS = ["/_sim/reset", "/_sim/faults", "/_sim/prices", "/_sim/positions"]


@pytest.mark.parametrize("path", ADMIN_POSTS)
def test_an_oversized_admin_body_is_refused_with_413(sim: Simulator, path: str):
    # Given a JSON body just over the 1 MiB limit
    body = json.dumps({"prices": {"BTC/USDT:USDT": "1" * (1024 * 1024)}})
    # When it is posted to the admin API
    response = sim.raw("POST", path, data=body, headers={"Content-Type": "application/json"})
    # Then it is refused as too large, with a JSON error, not as an internal error
    assert response.status_code == 413, response.text
    assert "larger than" in response.json()["error"]


@pytest.mark.parametrize("field", ["prices", "balances"])
@pytest.mark.parametrize("value", [["BTC/USDT:USDT", "1"], "65000", 7, True])
def test_a_reset_with_non_object_prices_or_balances_is_a_400(sim: Simulator, field, value):
    response = sim.raw("POST", "/_sim/reset", json={field: value})
    assert response.status_code == 400, response.text
    assert f"'{field}' must be an object" in response.json()["error"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.dictionaries(
        st.sampled_from(["seed", "balance", "balances", "prices", "exchange", "symbol", "size"]),
        JSON_VALUES,
        max_size=4,
    ),
    path=st.sampled_from(["/_sim/reset", "/_sim/positions"]),
)
def test_random_admin_bodies_never_cause_an_internal_error(sim: Simulator, body, path):
    response = sim.raw("POST", path, data=json.dumps(body))
    assert response.status_code in (200, 400), response.text


def test_the_simulator_is_still_serving(sim: Simulator):
    assert sim.raw("GET", "/fapi/v1/time").json()["serverTime"] > 0
