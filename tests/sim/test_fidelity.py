"""The simulator's Binance and Bybit answers have the shape of the real exchanges' answers.

Compared with real responses recorded by ccxt (tests/fixtures/ccxt, copied
from ccxt's static test fixtures), every recording of each call the
simulator serves, not only the first (see tests/sim/shapes.py). For each call:

1. the simulator's raw response carries the keys the recordings carry, with
   the kinds of values they show, in every row, and
2. the installed ccxt parses the simulated and the recorded answers into the
   same unified fields with the same kinds of values. A recording is parsed
   by making the same call on a second real client whose HTTP transport
   answers with the recording, so both go through ccxt's real code path (and
   a ccxt upgrade cannot make the recorded ``parsedResponse`` stale).

The simulated order or position is put in the same state as the recorded
one (a resting limit order against a resting one, a filled market order
against a filled one), so state-dependent fields compare like for like.
OKX is compared in test_okx_fidelity.py.
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
from tests.sim.shapes import differences
from workers.exchange import gateway
from workers.settings import get_settings

BTC = "BTC/USDT:USDT"

# Per-account facts a replaying client must not try to fetch from the recording.
ACCOUNT_OPTIONS = ("enableUnifiedMargin", "enableUnifiedAccount", "unifiedMarginStatus")


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


def unified(parsed: Any) -> list[dict]:
    """Unified structures without ``info`` (the raw part, compared on its own)."""
    items = parsed if isinstance(parsed, list) else [parsed]
    return [{k: v for k, v in item.items() if k != "info"} for item in items]


def assert_like(
    account: str,
    client: ccxt.Exchange,
    call: Callable[[ccxt.Exchange], Any],
    recorded: list[Any],
    alike: list[Any] | None = None,
    ids: frozenset[str] = frozenset(),
    parsed: list[Any] | None = None,
) -> Any:
    """Make ``call`` on the simulator and on each recording; compare raw and unified shapes.

    ``parsed`` names the recordings ``call`` can parse (a call for one order
    cannot parse a recorded list of two); all of ``recorded`` by default.
    """
    alike = recorded if alike is None else alike
    parsed = recorded if parsed is None else parsed
    simulated = call(client)
    assert differences(raw(client), recorded, alike, ids) == []
    real = [parsed_by_ccxt(account, body, call) for body in parsed]
    real_alike = [parsed_by_ccxt(account, body, call) for body in alike if body in parsed]
    assert simulated, "the simulated answer must hold something to compare"
    real_unified = [item for parsed in real for item in unified(parsed)]
    alike_unified = [item for parsed in real_alike for item in unified(parsed)]
    for item in unified(simulated):
        assert differences(item, real_unified, alike_unified, ids) == []
    return simulated


def responses(fixture: dict[str, list[dict]], *names: str) -> list[Any]:
    """The raw recorded answers of the named entries."""
    return [entry["httpResponse"] for name in names for entry in fixture[name]]


BINANCE = load_fixture("binance")
BYBIT = load_fixture("bybit")


# --- Binance -------------------------------------------------------------------------

BINANCE_CREATE = "createOrders: create swap orders"
BINANCE_OPEN = "fetchOpenOrder: swap open order"
BINANCE_POSITIONS = (
    "fetchPositions: Fetch linear positions without symbols",
    "fetchPositions: Fetch linear positions with symbols",
)
BINANCE_ACCOUNT = "fetchPositions: Fetch linear positions using account endnpoint"
BINANCE_ACCOUNT_V2 = "fetchBalance: Linear swap balance"


def binance_created() -> list[Any]:
    # createOrders answers a list; each element is a create answer
    return [row for body in responses(BINANCE, BINANCE_CREATE) for row in body]


def test_binance_create_order(binance: ccxt.Exchange, sim: Simulator):
    # The recording is a resting limit sell far above the market
    order = assert_like(
        "binance",
        binance,
        lambda c: c.create_order(BTC, "limit", "sell", 0.2, 110001),
        binance_created(),
    )
    assert order["status"] == "open"


def test_binance_fetch_order(binance: ccxt.Exchange, sim: Simulator):
    # The recording is a resting post-only limit buy (GTX)
    created = binance.create_order(BTC, "limit", "buy", 0.2, 50000, {"timeInForce": "PO"})
    order = assert_like(
        "binance",
        binance,
        lambda c: c.fetch_order(created["id"], BTC),
        responses(BINANCE, BINANCE_OPEN),
    )
    assert order["postOnly"] is True


def test_binance_open_orders(binance: ccxt.Exchange, sim: Simulator):
    binance.create_order(BTC, "limit", "buy", 0.2, 50000, {"timeInForce": "PO"})
    binance.create_order(BTC, "limit", "buy", 0.3, 49000, {"timeInForce": "PO"})
    orders = assert_like(
        "binance",
        binance,
        lambda c: c.fetch_open_orders(BTC),
        [[row] for row in responses(BINANCE, BINANCE_OPEN)],
    )
    assert len(orders) == 2


def test_binance_cancel_order(binance: ccxt.Exchange, sim: Simulator):
    # DELETE /fapi/v1/order answers with the create's fields (status CANCELED)
    created = binance.create_order(BTC, "limit", "sell", 0.2, 110001)
    canceled = assert_like(
        "binance", binance, lambda c: c.cancel_order(created["id"], BTC), binance_created()
    )
    assert canceled["status"] == "canceled"


@pytest.mark.parametrize("symbols", [None, [BTC]], ids=["all", "by-symbol"])
def test_binance_positions(binance: ccxt.Exchange, sim: Simulator, symbols):
    # The recorded account: 25.7 USDT wallet, 0.009 BTC long from 67,445.9
    sim.reset(balance="25.7261006", prices={BTC: "67502.6"})
    sim.set_position("binance", BTC, "0.009", "67445.9")
    (position,) = assert_like(
        "binance",
        binance,
        lambda c: c.fetch_positions(symbols),
        responses(BINANCE, *BINANCE_POSITIONS),
    )
    assert position["side"] == "long" and position["liquidationPrice"] > 0


def test_binance_balance(binance: ccxt.Exchange, sim: Simulator):
    # ccxt reads the futures balance from /fapi/v3/account (recorded for positions)
    sim.set_position("binance", BTC, "0.009", "67445.9")
    recorded = responses(BINANCE, BINANCE_ACCOUNT)
    simulated = binance.fetch_balance()
    assert differences(raw(binance), recorded) == []
    real = parsed_by_ccxt("binance", recorded[0], lambda c: c.fetch_balance())
    assert differences(simulated["USDT"], [real["USDT"]]) == []
    assert simulated["USDT"]["total"] == pytest.approx(1_000_000, rel=1e-3)


def test_binance_balance_from_the_v2_account(binance: ccxt.Exchange, sim: Simulator):
    # The older /fapi/v2/account (ccxt's useV2) answers with the account's flags too
    recorded = responses(BINANCE, BINANCE_ACCOUNT_V2)
    simulated = binance.fetch_balance({"useV2": True})
    assert "/fapi/v2/account" in binance.last_request_url
    body = raw(binance)
    # The recorded account held no position; v2 lists every symbol's row.
    assert differences({**body, "positions": []}, recorded) == []
    real = parsed_by_ccxt("binance", recorded[0], lambda c: c.fetch_balance({"useV2": True}))
    assert differences(simulated["USDT"], [real["USDT"]]) == []


def test_binance_ticker_parses_like_a_swap_ticker(binance: ccxt.Exchange, sim: Simulator):
    # No USDⓈ-M ticker was recorded among the fixtures: check what ccxt fills
    ticker = binance.fetch_ticker(BTC)
    assert raw(binance)["symbol"] == "BTCUSDT"
    for name in ("last", "open", "high", "low", "close", "baseVolume", "quoteVolume"):
        assert ticker[name] is not None and ticker[name] > 0, name
    assert ticker["timestamp"] is not None


# --- Bybit ---------------------------------------------------------------------------

BYBIT_IDS = frozenset({"orderId", "orderLinkId", "id", "clientOrderId"})
BYBIT_CREATE = ("createOrder: create spot order", "createOrder: spot stopLossPrice order")
BYBIT_OPEN = "fetchOpenOrder: Fetch an open swap order by its ID and symbol"
BYBIT_CLOSED = (
    "fetchClosedOrder: Fetch swap closed order by its ID and symbol",
    "fetchClosedOrders: Fetch swap closed orders by the symbol",
)
BYBIT_OPEN_POSITION = "fetchPositions: Fetch linear position"
BYBIT_FLAT_POSITION = "fetchPosition: linear position"


def bybit_create_answers() -> list[Any]:
    # Both recordings are spot creates; the v5 answer is the same two ids for linear
    return responses(BYBIT, *BYBIT_CREATE)


def test_bybit_create_order(bybit: ccxt.Exchange, sim: Simulator):
    order = assert_like(
        "bybit",
        bybit,
        lambda c: c.create_order(BTC, "limit", "buy", 0.1, 60000, {"clientOrderId": "fid-1"}),
        bybit_create_answers(),
        ids=BYBIT_IDS,
    )
    assert order["status"] is None


def test_bybit_open_order(bybit: ccxt.Exchange, sim: Simulator):
    # The recording is a resting limit buy without an orderLinkId
    created = bybit.create_order(BTC, "limit", "buy", 0.005, 60000)
    bybit.create_order(BTC, "limit", "buy", 0.005, 59000)
    recorded = responses(BYBIT, BYBIT_OPEN)
    for call in (
        lambda c: c.fetch_order(created["id"], BTC, {"acknowledged": True}),
        lambda c: c.fetch_open_order(created["id"], BTC),
        lambda c: c.fetch_open_orders(BTC),
    ):
        assert_like("bybit", bybit, call, recorded)


def test_bybit_filled_order_through_the_realtime_endpoint(bybit: ccxt.Exchange, sim: Simulator):
    # fetch_order asks /v5/order/realtime; a finished order has history's fields
    # (extraFees, slippageTolerance, slippageToleranceType), as recorded for closed orders
    created = bybit.create_order(BTC, "market", "buy", 0.005)
    order = assert_like(
        "bybit",
        bybit,
        lambda c: c.fetch_order(created["id"], BTC, {"acknowledged": True}),
        responses(BYBIT, *BYBIT_CLOSED),
        parsed=responses(BYBIT, BYBIT_CLOSED[0]),
    )
    assert order["status"] == "closed"
    row = raw(bybit)["result"]["list"][0]
    assert {"extraFees", "slippageTolerance", "slippageToleranceType"} <= set(row)


def test_bybit_order_history(bybit: ccxt.Exchange, sim: Simulator):
    # The recordings are filled market orders without an orderLinkId, one and two rows
    first = bybit.create_order(BTC, "market", "buy", 0.005)
    bybit.create_order(BTC, "market", "sell", 0.005, None, {"reduceOnly": True})
    recorded = responses(BYBIT, *BYBIT_CLOSED)
    order = assert_like(
        "bybit",
        bybit,
        lambda c: c.fetch_closed_order(first["id"], BTC),
        recorded,
        parsed=responses(BYBIT, BYBIT_CLOSED[0]),
    )
    assert order["status"] == "closed"
    orders = assert_like("bybit", bybit, lambda c: c.fetch_closed_orders(BTC), recorded)
    assert len(orders) == 2


def test_bybit_cancel_order(bybit: ccxt.Exchange, sim: Simulator):
    # v5 cancel answers like create: {orderId, orderLinkId}
    created = bybit.create_order(BTC, "limit", "buy", 0.1, 60000, {"clientOrderId": "fid-2"})
    canceled = assert_like(
        "bybit",
        bybit,
        lambda c: c.cancel_order(created["id"], BTC),
        bybit_create_answers(),
        ids=BYBIT_IDS,
    )
    assert canceled["id"] == created["id"]


def test_bybit_open_position(bybit: ccxt.Exchange, sim: Simulator):
    sim.set_position("bybit", BTC, "1.2", "64599.47")
    recorded = responses(BYBIT, BYBIT_OPEN_POSITION, BYBIT_FLAT_POSITION)
    (position,) = assert_like(
        "bybit",
        bybit,
        lambda c: c.fetch_positions([BTC]),
        recorded,
        alike=responses(BYBIT, BYBIT_OPEN_POSITION),
    )
    assert position["side"] == "long"
    # The position rows carry the page cursor, as in the recorded answer
    (row,) = raw(bybit)["result"]["list"]
    assert row["nextPageCursor"] == raw(bybit)["result"]["nextPageCursor"] != ""


def test_bybit_flat_position_row(bybit: ccxt.Exchange, sim: Simulator):
    recorded = responses(BYBIT, BYBIT_OPEN_POSITION, BYBIT_FLAT_POSITION)
    position = assert_like(
        "bybit",
        bybit,
        lambda c: c.fetch_position(BTC),
        recorded,
        alike=responses(BYBIT, BYBIT_FLAT_POSITION),
    )
    assert position["contracts"] == 0


def test_bybit_ticker(bybit: ccxt.Exchange, sim: Simulator):
    ticker = assert_like(
        "bybit", bybit, lambda c: c.fetch_ticker(BTC), responses(BYBIT, "fetchTicker: swap ticker")
    )
    assert ticker["last"] == pytest.approx(65000)


def test_bybit_balance(bybit: ccxt.Exchange, sim: Simulator):
    recorded = responses(BYBIT, "fetchBalance: balance after availableToWithdraw update")
    simulated = bybit.fetch_balance()
    assert differences(raw(bybit), recorded) == []
    real = parsed_by_ccxt("bybit", recorded[0], lambda c: c.fetch_balance())
    assert differences(simulated["USDT"], [real["USDT"]]) == []
    assert simulated["USDT"]["total"] == pytest.approx(1_000_000)


# --- the comparison itself -----------------------------------------------------------


def test_the_comparison_notices_missing_keys_and_changed_kinds():
    real = {"a": "1.5", "b": {"c": True}, "d": [{"e": ""}]}
    assert differences({"a": 1.5, "b": {"c": False}, "d": [{"e": ""}]}, [real]) == []
    assert differences({"a": "x", "b": {"c": True}, "d": [{"e": ""}]}, [real]) != []
    assert differences({"a": "1", "b": {}, "d": [{"e": ""}]}, [real]) != []
    assert differences({"a": "1", "b": {"c": True}, "d": [{"e": ""}, {"e": "", "f": 1}]}, [real])


def test_the_comparison_takes_keys_from_every_recording():
    older, newer = {"a": "1"}, {"a": "2", "added": ""}
    # A key only the newer recording has is still required ...
    assert differences({"a": "3"}, [older, newer]) == ["$.added: missing in the simulator"]
    # ... and kinds come from the recordings in the same state
    assert differences({"a": "", "added": ""}, [older, newer], alike=[older]) != []


def test_the_recording_is_what_ccxt_parsed(sim: Simulator):
    recorded = responses(BINANCE, BINANCE_POSITIONS[0])[0]
    (position,) = parsed_by_ccxt("binance", recorded, lambda c: c.fetch_positions())
    assert position["contracts"] == pytest.approx(0.009)
    assert position["entryPrice"] == pytest.approx(67445.9)
