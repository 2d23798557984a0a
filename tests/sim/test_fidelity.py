"""The simulator's responses have the shape of the real exchanges' responses.

Compared with real responses recorded by ccxt (tests/fixtures/ccxt, copied
from ccxt's static test fixtures). For each call:

1. the simulator's raw response carries the same keys with the same kinds of
   values as the recorded one, and
2. the installed ccxt parses both into the same unified fields with the same
   kinds of values. The recording is parsed by making the same call on a
   second real client whose HTTP transport answers with the recording, so
   both go through ccxt's real code path (and a ccxt upgrade cannot make the
   recorded ``parsedResponse`` stale).

"Kind" is deliberately a little coarse: ccxt's recorder stored some numbers
as strings (Binance's ``orderId`` is a JSON number on the wire but a string in
one fixture and a number in another), so integers and numeric strings are
both "number". Text, empty strings, booleans, nulls, lists and objects are
kinds of their own. The simulated order or position is put in the same state
as the recorded one (a resting limit order against a resting one, a filled
market order against a filled one), so state-dependent fields compare like
for like.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import ccxt
import pytest
import requests
from requests.adapters import HTTPAdapter

from tests.sim.conftest import Simulator, load_fixture
from workers.exchange import gateway
from workers.settings import get_settings

BTC = "BTC/USDT:USDT"

# Keys ccxt's recorder added to the raw response (pagination cursors copied into rows).
RECORDER_ARTEFACTS = {"nextPageCursor"}
# Per-account facts a replaying client must not try to fetch from the recording.
ACCOUNT_OPTIONS = ("enableUnifiedMargin", "enableUnifiedAccount", "unifiedMarginStatus")


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        if value == "":
            return "empty"
        try:
            float(value)
        except ValueError:
            return "text"
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def shape_differences(
    real: Any, simulated: Any, path: str = "$", ids: frozenset[str] = frozenset()
) -> list[str]:
    """Where the simulated value's keys or kinds differ from the real one.

    Keys in ``ids`` are compared for presence only (an id's format is the
    exchange's business: Bybit's spot ids are digits, its linear ids UUIDs).
    """
    if kind(real) != kind(simulated):
        return [
            f"{path}: real {kind(real)} {real!r:.60}, simulated {kind(simulated)} {simulated!r:.60}"
        ]
    differences = []
    if isinstance(real, dict):
        real_keys = set(real) - RECORDER_ARTEFACTS
        simulated_keys = set(simulated) - RECORDER_ARTEFACTS
        for missing in sorted(real_keys - simulated_keys):
            differences.append(f"{path}.{missing}: missing in the simulator")
        for extra in sorted(simulated_keys - real_keys):
            differences.append(f"{path}.{extra}: not in the real response")
        for key in sorted((real_keys & simulated_keys) - ids):
            differences.extend(shape_differences(real[key], simulated[key], f"{path}.{key}", ids))
    elif isinstance(real, list) and real and simulated:
        differences.extend(shape_differences(real[0], simulated[0], f"{path}[0]", ids))
    return differences


def unified_differences(
    real: dict, simulated: dict, ids: frozenset[str] = frozenset()
) -> list[str]:
    """Unified fields: same keys, same kinds (``info`` is the raw part, checked on its own)."""
    real_fields = {k: v for k, v in real.items() if k != "info"}
    simulated_fields = {k: v for k, v in simulated.items() if k != "info"}
    return shape_differences(real_fields, simulated_fields, "unified", ids)


class Recording(HTTPAdapter):
    """Answers every request with one recorded exchange response (HTTP 200, JSON)."""

    def __init__(self, body: Any) -> None:
        super().__init__()
        self.body = json.dumps(body).encode()

    def send(self, request, *args, **kwargs) -> requests.Response:  # noqa: ANN001, ANN002, ANN003
        response = requests.Response()
        response.status_code = 200
        response.reason = "OK"
        response._content = self.body
        response.headers["Content-Type"] = "application/json"
        response.url = request.url
        response.request = request
        return response


def on_simulated_market(recorded: Any) -> Any:
    """The recording with its market (LTCUSDT, not simulated) renamed to BTCUSDT."""
    return json.loads(json.dumps(recorded).replace('"LTCUSDT"', '"BTCUSDT"'))


def parsed_by_ccxt(account: str, recorded: Any, call: Callable[[ccxt.Exchange], Any]) -> Any:
    """What the installed ccxt makes of a recorded response to ``call``."""
    live = gateway.get_client(account)
    replay = gateway.build_client(get_settings().account(account))
    replay.set_markets_from_exchange(live)
    for option in (*ACCOUNT_OPTIONS, "leverageBrackets"):
        if live.options.get(option) is not None:
            replay.options[option] = live.options[option]
    replay.session.mount("https://", Recording(on_simulated_market(recorded)))
    return call(replay)


def raw(client: ccxt.Exchange) -> Any:
    return json.loads(client.last_http_response)


BINANCE = load_fixture("binance")
BYBIT = load_fixture("bybit")


# --- Binance -------------------------------------------------------------------------


def assert_same_shape(
    account: str,
    client: ccxt.Exchange,
    call: Callable[[ccxt.Exchange], Any],
    recorded: Any,
    ids: frozenset[str] = frozenset(),
) -> Any:
    """Make ``call`` on the simulator and on the recording; compare raw and unified shapes."""
    simulated = call(client)
    assert shape_differences(recorded, raw(client), ids=ids) == []
    real = parsed_by_ccxt(account, recorded, call)
    if isinstance(real, list):
        assert real and simulated, "both answers must hold something to compare"
        real, simulated = real[0], simulated[0]
    assert unified_differences(real, simulated, ids) == []
    return simulated


def test_binance_create_order(binance: ccxt.Exchange, sim: Simulator):
    recorded = BINANCE["createOrders: create swap orders"]["httpResponse"][0]
    # The recording is a resting limit sell far above the market
    order = assert_same_shape(
        "binance", binance, lambda c: c.create_order(BTC, "limit", "sell", 0.2, 110001), recorded
    )
    assert order["status"] == "open"


def test_binance_fetch_order(binance: ccxt.Exchange, sim: Simulator):
    recorded = BINANCE["fetchOpenOrder: swap open order"]["httpResponse"]
    # The recording is a resting post-only limit buy (GTX)
    created = binance.create_order(BTC, "limit", "buy", 0.2, 50000, {"timeInForce": "PO"})
    order = assert_same_shape(
        "binance", binance, lambda c: c.fetch_order(created["id"], BTC), recorded
    )
    assert order["postOnly"] is True


def test_binance_open_orders(binance: ccxt.Exchange, sim: Simulator):
    recorded = [BINANCE["fetchOpenOrder: swap open order"]["httpResponse"]]
    binance.create_order(BTC, "limit", "buy", 0.2, 50000, {"timeInForce": "PO"})
    assert_same_shape("binance", binance, lambda c: c.fetch_open_orders(BTC), recorded)


def test_binance_cancel_order(binance: ccxt.Exchange, sim: Simulator):
    # DELETE /fapi/v1/order answers with the create's fields (status CANCELED)
    recorded = BINANCE["createOrders: create swap orders"]["httpResponse"][0]
    created = binance.create_order(BTC, "limit", "sell", 0.2, 110001)
    simulated = binance.cancel_order(created["id"], BTC)
    assert shape_differences(recorded, raw(binance)) == []
    real = parsed_by_ccxt("binance", recorded, lambda c: c.cancel_order(created["id"], BTC))
    assert unified_differences(real, simulated) == []
    assert simulated["status"] == "canceled"


def test_binance_positions(binance: ccxt.Exchange, sim: Simulator):
    recorded = BINANCE["fetchPositions: Fetch linear positions without symbols"]["httpResponse"]
    # The recorded account: 25.7 USDT wallet, 0.009 BTC long from 67,445.9
    sim.reset(balance="25.7261006", prices={BTC: "67502.6"})
    sim.set_position("binance", BTC, "0.009", "67445.9")
    position = assert_same_shape("binance", binance, lambda c: c.fetch_positions(), recorded)
    assert position["side"] == "long" and position["liquidationPrice"] > 0


def test_binance_balance(binance: ccxt.Exchange, sim: Simulator):
    # ccxt reads the futures balance from /fapi/v3/account (recorded for positions)
    recorded = BINANCE["fetchPositions: Fetch linear positions using account endnpoint"]
    body = recorded["httpResponse"]
    usdt_only = {**body, "assets": [a for a in body["assets"] if a["asset"] == "USDT"]}
    sim.set_position("binance", BTC, "0.009", "67445.9")
    simulated = binance.fetch_balance()
    assert shape_differences(usdt_only, raw(binance)) == []
    real = parsed_by_ccxt("binance", usdt_only, lambda c: c.fetch_balance())
    assert shape_differences(real["USDT"], simulated["USDT"]) == []
    assert simulated["USDT"]["total"] == pytest.approx(1_000_000, rel=1e-3)


def test_binance_ticker_parses_like_a_swap_ticker(binance: ccxt.Exchange, sim: Simulator):
    # No USDⓈ-M ticker was recorded among the fixtures: check what ccxt fills
    ticker = binance.fetch_ticker(BTC)
    assert raw(binance)["symbol"] == "BTCUSDT"
    for field in ("last", "open", "high", "low", "close", "baseVolume", "quoteVolume"):
        assert kind(ticker[field]) == "number", field
    assert ticker["timestamp"] is not None


# --- Bybit ---------------------------------------------------------------------------

BYBIT_IDS = frozenset({"orderId", "orderLinkId", "id", "clientOrderId"})


def test_bybit_create_order(bybit: ccxt.Exchange, sim: Simulator):
    # The recording is a spot create; the v5 answer is the same two ids for linear
    recorded = BYBIT["createOrder: create spot order"]["httpResponse"]
    order = assert_same_shape(
        "bybit",
        bybit,
        lambda c: c.create_order(BTC, "limit", "buy", 0.1, 60000, {"clientOrderId": "fid-1"}),
        recorded,
        ids=BYBIT_IDS,
    )
    assert order["status"] is None


def test_bybit_fetch_order(bybit: ccxt.Exchange, sim: Simulator):
    recorded = BYBIT["fetchOpenOrder: Fetch an open swap order by its ID and symbol"]
    # The recording is a resting limit buy without an orderLinkId
    created = bybit.create_order(BTC, "limit", "buy", 0.005, 60000)
    for call in (
        lambda c: c.fetch_order(created["id"], BTC, {"acknowledged": True}),
        lambda c: c.fetch_open_order(created["id"], BTC),
        lambda c: c.fetch_open_orders(BTC),
    ):
        assert_same_shape("bybit", bybit, call, recorded["httpResponse"])


def test_bybit_order_history(bybit: ccxt.Exchange, sim: Simulator):
    recorded = BYBIT["fetchClosedOrder: Fetch swap closed order by its ID and symbol"]
    # The recording is a filled market buy without an orderLinkId
    created = bybit.create_order(BTC, "market", "buy", 0.005)
    order = assert_same_shape(
        "bybit",
        bybit,
        lambda c: c.fetch_closed_order(created["id"], BTC),
        recorded["httpResponse"],
    )
    assert order["status"] == "closed"


def test_bybit_cancel_order(bybit: ccxt.Exchange, sim: Simulator):
    # v5 cancel answers like create: {orderId, orderLinkId}
    recorded = BYBIT["createOrder: create spot order"]["httpResponse"]
    created = bybit.create_order(BTC, "limit", "buy", 0.1, 60000, {"clientOrderId": "fid-2"})
    canceled = assert_same_shape(
        "bybit", bybit, lambda c: c.cancel_order(created["id"], BTC), recorded, ids=BYBIT_IDS
    )
    assert canceled["id"] == created["id"]


def test_bybit_positions(bybit: ccxt.Exchange, sim: Simulator):
    recorded = BYBIT["fetchPositions: Fetch linear position"]["httpResponse"]
    sim.set_position("bybit", BTC, "1.2", "64599.47")
    position = assert_same_shape("bybit", bybit, lambda c: c.fetch_positions([BTC]), recorded)
    assert position["side"] == "long"


def test_bybit_flat_position_row(bybit: ccxt.Exchange, sim: Simulator):
    recorded = BYBIT["fetchPosition: linear position"]["httpResponse"]
    position = assert_same_shape("bybit", bybit, lambda c: c.fetch_position(BTC), recorded)
    assert position["contracts"] == 0


def test_bybit_ticker(bybit: ccxt.Exchange, sim: Simulator):
    recorded = BYBIT["fetchTicker: swap ticker"]["httpResponse"]
    ticker = assert_same_shape("bybit", bybit, lambda c: c.fetch_ticker(BTC), recorded)
    assert ticker["last"] == pytest.approx(65000)


def test_bybit_balance(bybit: ccxt.Exchange, sim: Simulator):
    body = BYBIT["fetchBalance: balance after availableToWithdraw update"]["httpResponse"]
    account = body["result"]["list"][0]
    usdt_only = {
        **body,
        "result": {
            "list": [{**account, "coin": [c for c in account["coin"] if c["coin"] == "USDT"]}]
        },
    }
    simulated = bybit.fetch_balance()
    assert shape_differences(usdt_only, raw(bybit)) == []
    real = parsed_by_ccxt("bybit", usdt_only, lambda c: c.fetch_balance())
    assert shape_differences(real["USDT"], simulated["USDT"]) == []
    assert simulated["USDT"]["total"] == pytest.approx(1_000_000)


def test_the_comparison_notices_missing_keys_and_changed_kinds():
    real = {"a": "1.5", "b": {"c": True}, "d": [{"e": ""}]}
    assert shape_differences(real, {"a": 1.5, "b": {"c": False}, "d": [{"e": ""}]}) == []
    assert shape_differences(real, {"a": "x", "b": {"c": True}, "d": [{"e": ""}]}) != []
    assert shape_differences(real, {"a": "1", "b": {}, "d": [{"e": ""}]}) != []
    assert shape_differences(real, {"a": "1", "b": {"c": True}, "d": [{"e": "", "f": 1}]}) != []


def test_the_recording_is_what_ccxt_parsed(sim: Simulator):
    recorded = BINANCE["fetchPositions: Fetch linear positions without symbols"]["httpResponse"]
    (position,) = parsed_by_ccxt("binance", recorded, lambda c: c.fetch_positions())
    assert position["contracts"] == pytest.approx(0.009)
    assert position["entryPrice"] == pytest.approx(67445.9)
