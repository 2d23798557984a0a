"""Trading OKX perpetual swaps on the simulator through the real ccxt.okx client.

Sizes on OKX are contracts (``ctVal`` base units each); the simulator's
ledger and positions admin API speak base units and carry the contracts
alongside. Refusals come back as OKX's own codes, and each test asserts the
ccxt exception class the real client raises for them, because execq
classifies failures by class.
"""

from __future__ import annotations

import json
import time

import ccxt
import pytest

from tests.conftest import wait_for
from tests.sim.conftest import HANG_MS, Simulator, okx_client

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
DOGE = "DOGE/USDT:USDT"


def okx_code(error: Exception) -> str:
    """OKX's code from ccxt's message (``okx {json}``): the order's sCode when there is one."""
    body = json.loads(str(error).split(" ", 1)[1])
    data = body.get("data") or []
    if data and isinstance(data[0], dict) and data[0].get("sCode") not in (None, "0"):
        return data[0]["sCode"]
    return body["code"]


def place(okx: ccxt.okx, **fields: object) -> dict:
    """Place one order as given (no ccxt rounding), through the signed implicit API."""
    order = {"instId": "BTC-USDT-SWAP", "tdMode": "cross", "side": "buy", "ordType": "market"}
    return okx.privatePostTradeOrder({**order, **fields})


def fault(**rule) -> dict:
    return {"rules": [{"exchange": "okx", **rule}]}


# --- markets and orders -----------------------------------------------------------------


def test_load_markets_with_ccxts_defaults(sim: Simulator):
    # Given a plain ccxt.okx (every instrument type, currencies fetched with the key)
    client = okx_client(fetchMarkets={"types": ["spot", "future", "swap", "option"]})
    # When it loads its markets
    markets = client.load_markets()
    # Then it sees the ten simulated USDT swaps, and nothing else is listed
    assert sorted(markets) == sorted(
        f"{base}/USDT:USDT"
        for base in ("BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "LINK", "AVAX", "LTC", "BNB")
    )
    assert "USDT" in client.currencies
    assert sim.requests_for("okx", "markets") >= 5  # four instrument types and currencies


def test_a_market_order_is_in_contracts(okx: ccxt.okx, sim: Simulator):
    # Given BTC at 65,000, one contract being 0.01 BTC
    # When a market buy of 0.5 contracts is sent with a client order id
    created = okx.create_order(BTC, "market", "buy", 0.5, None, {"clientOrderId": "okxmkt1"})
    # Then it filled 0.5 contracts at 65,000 and the account is 0.005 BTC long
    order = okx.fetch_order(created["id"], BTC)
    assert (order["status"], order["filled"], order["average"]) == ("closed", 0.5, 65000)
    assert order["clientOrderId"] == "okxmkt1"
    assert order["fee"]["cost"] == pytest.approx(0.005 * 65000 * 0.0005)
    (position,) = okx.fetch_positions()
    assert (position["contracts"], position["contractSize"], position["side"]) == (
        0.5,
        0.01,
        "long",
    )
    # And the simulator's ledger and positions speak base units, with the contracts alongside
    (entry,) = sim.orders("okx")
    assert (entry["amount"], entry["filled"], entry["contracts"], entry["contractSize"]) == (
        "0.005",
        "0.005",
        "0.5",
        "0.01",
    )
    assert sim.position("okx", BTC)["size"] == "0.005"
    assert sim.position("okx", BTC)["contracts"] == "0.5"


def test_a_limit_order_rests_until_the_price_crosses_and_cancel_ends_one(
    okx: ccxt.okx, sim: Simulator
):
    # Given two resting buys on ETH at 3,400 and 3,300
    first = okx.create_order(ETH, "limit", "buy", 1, 3400, {"clientOrderId": "rest1"})
    second = okx.create_order(ETH, "limit", "buy", 1, 3300, {"clientOrderId": "rest2"})
    assert {o["clientOrderId"] for o in okx.fetch_open_orders(ETH)} == {"rest1", "rest2"}
    # When the second is cancelled and the price falls to 3,390
    assert okx.cancel_order(second["id"], ETH)["id"] == second["id"]
    sim.prices({"symbol": ETH, "price": "3390"})
    # Then the first filled at its limit price and the second is canceled
    filled = okx.fetch_order(first["id"], ETH)
    assert (filled["status"], filled["average"]) == ("closed", 3400)
    assert okx.fetch_open_orders(ETH) == []
    assert [o["id"] for o in okx.fetch_closed_orders(ETH)] == [first["id"]]
    assert [o["id"] for o in okx.fetch_canceled_orders(ETH)] == [second["id"]]


def test_a_post_only_order_that_would_take_is_accepted_and_canceled(okx: ccxt.okx, sim: Simulator):
    # OKX does not refuse it: the order exists, canceled at once without a fill
    created = okx.create_order(BTC, "limit", "buy", 1, 66000, {"postOnly": True})
    order = okx.fetch_order(created["id"], BTC)
    assert (order["status"], order["filled"]) == ("canceled", 0)
    assert order["info"]["cancelSource"] == "31"


def test_a_client_id_is_unique_among_pending_orders_only(okx: ccxt.okx, sim: Simulator):
    # Given a resting order with client id "same1"
    resting = okx.create_order(BTC, "limit", "buy", 1, 60000, {"clientOrderId": "same1"})
    # When another order uses it while the first is pending, OKX refuses it (51016)
    with pytest.raises(ccxt.InvalidOrder) as caught:
        okx.create_order(BTC, "market", "buy", 1, None, {"clientOrderId": "same1"})
    assert okx_code(caught.value) == "51016"
    # But once the first is finished the id can be used again: a second order
    okx.cancel_order(resting["id"], BTC)
    again = okx.create_order(BTC, "market", "buy", 1, None, {"clientOrderId": "same1"})
    assert again["id"] != resting["id"]
    assert len(sim.orders("okx", "same1")) == 2
    # And a lookup by client id finds the newest order with it
    found = okx.fetch_order(None, BTC, {"clientOrderId": "same1"})
    assert (found["id"], found["status"]) == (again["id"], "closed")


@pytest.mark.parametrize("client_id", ["has-dash", "x" * 33, "under_score"])
def test_a_client_id_must_be_1_to_32_alphanumerics(okx: ccxt.okx, sim: Simulator, client_id):
    with pytest.raises(ccxt.BadRequest) as caught:
        okx.create_order(BTC, "market", "buy", 1, None, {"clientOrderId": client_id})
    assert okx_code(caught.value) == "51000"
    assert sim.ledger() == []


def test_a_position_never_held_is_not_listed_but_a_closed_one_is(okx: ccxt.okx, sim: Simulator):
    # A symbol that never had a position has no row (ccxt: NullResponse) ...
    with pytest.raises(ccxt.NullResponse):
        okx.fetch_position(ETH)
    # ... while one opened and closed keeps its row, with zero contracts, when asked by instId
    okx.create_order(ETH, "market", "buy", 1)
    okx.create_order(ETH, "market", "sell", 1, None, {"reduceOnly": True})
    assert okx.fetch_position(ETH)["contracts"] == 0
    assert okx.fetch_positions() == []


def test_a_position_set_by_hand_is_reported_in_contracts(okx: ccxt.okx, sim: Simulator):
    sim.set_position("okx", DOGE, "-2500", "0.16")
    (position,) = okx.fetch_positions([DOGE])
    assert (position["side"], position["contracts"], position["entryPrice"]) == ("short", 2.5, 0.16)


def test_create_orders_answers_per_order(okx: ccxt.okx, sim: Simulator):
    # Given a batch where the second order cannot be placed (reduce-only without a position)
    orders = okx.create_orders(
        [
            {"symbol": BTC, "type": "market", "side": "buy", "amount": 1},
            {
                "symbol": ETH,
                "type": "market",
                "side": "sell",
                "amount": 1,
                "params": {"reduceOnly": True},
            },
        ]
    )
    # Then the first is placed, the second rejected, and the answer says so per order
    assert orders[0]["id"] and orders[1]["status"] == "rejected"
    assert [entry["symbol"] for entry in sim.ledger()] == [BTC]


def test_leverage_is_set_per_instrument(okx: ccxt.okx, sim: Simulator):
    okx.set_leverage(5, BTC, {"mgnMode": "cross"})
    assert okx.fetch_leverage(BTC, {"marginMode": "cross"})["longLeverage"] == 5
    okx.create_order(BTC, "market", "buy", 1)
    assert okx.fetch_position(BTC)["leverage"] == 5


def test_the_balance_pays_for_fees(okx: ccxt.okx, sim: Simulator):
    okx.create_order(BTC, "market", "buy", 1)
    okx.create_order(BTC, "market", "sell", 1, None, {"reduceOnly": True})
    fees = 2 * 0.01 * 65000 * 0.0005
    assert okx.fetch_balance()["USDT"]["total"] == pytest.approx(1_000_000 - fees)


def test_order_history_archive_has_no_canceled_orders_without_fills(okx: ccxt.okx, sim: Simulator):
    filled = okx.create_order(BTC, "market", "buy", 1)
    resting = okx.create_order(BTC, "limit", "buy", 1, 60000)
    okx.cancel_order(resting["id"], BTC)
    recent = okx.privateGetTradeOrdersHistory({"instType": "SWAP"})["data"]
    archive = okx.privateGetTradeOrdersHistoryArchive({"instType": "SWAP"})["data"]
    assert [row["ordId"] for row in recent] == [resting["id"], filled["id"]]
    assert [row["ordId"] for row in archive] == [filled["id"]]


def test_the_admin_api_sets_okx_prices_and_balance_on_their_own(sim: Simulator):
    # Given a reset giving OKX alone 500 USDT, and OKX alone a BTC price of 64,000
    sim.reset(balances={"okx": "500"})
    sim.prices({"exchange": "okx", "symbol": BTC, "price": "64000"})
    client = okx_client()
    # Then OKX trades at 64,000 with 500 USDT while Binance keeps its defaults
    assert client.fetch_ticker(BTC)["last"] == 64000
    assert client.fetch_balance()["USDT"]["total"] == 500
    prices = sim.raw("GET", "/_sim/prices").json()["prices"]
    assert (prices["okx"][BTC], prices["binance"][BTC]) == ("64000.0", "65000.00")


# --- refusals and the class ccxt raises ---------------------------------------------------


def test_insufficient_margin_is_insufficient_funds(sim: Simulator):
    sim.reset(balance="100")
    client = okx_client()
    # 1 BTC at 65,000 needs 6,500 USDT of margin at 10x
    with pytest.raises(ccxt.InsufficientFunds) as caught:
        client.create_order(BTC, "market", "buy", 100)
    assert okx_code(caught.value) == "51008"
    assert sim.ledger() == []


def test_unknown_orders_are_order_not_found(okx: ccxt.okx, sim: Simulator):
    with pytest.raises(ccxt.OrderNotFound) as caught:
        okx.fetch_order("123456", BTC)
    assert okx_code(caught.value) == "51603"
    with pytest.raises(ccxt.OrderNotFound) as caught:
        okx.cancel_order("123456", BTC)
    assert okx_code(caught.value) == "51400"
    filled = okx.create_order(BTC, "market", "buy", 1)
    with pytest.raises(ccxt.OrderNotFound):
        okx.cancel_order(filled["id"], BTC)


@pytest.mark.parametrize(
    ("position", "side", "contracts", "code", "error"),
    [
        # ccxt 4.5 maps neither 51169 nor 51170: the real client raises ExchangeError
        (None, "sell", 1, "51169", ccxt.ExchangeError),
        ("0.01", "buy", 1, "51170", ccxt.ExchangeError),
        ("0.01", "sell", 2, "51205", ccxt.InvalidOrder),
    ],
    ids=["no-position", "same-side", "would-flip"],
)
def test_reduce_only_that_would_open_or_flip_is_refused(
    okx: ccxt.okx, sim: Simulator, position, side, contracts, code, error
):
    if position:
        sim.set_position("okx", BTC, position, "65000")
    with pytest.raises(error) as caught:
        okx.create_order(BTC, "market", side, contracts, None, {"reduceOnly": True})
    assert type(caught.value) is error
    assert okx_code(caught.value) == code


@pytest.mark.parametrize(
    ("fields", "code", "error"),
    [
        ({"sz": "0.005"}, "51121", ccxt.InvalidOrder),  # not a multiple of the 0.01 lot
        ({"sz": "0"}, "51000", ccxt.BadRequest),
        ({"sz": "20000"}, "51202", ccxt.InvalidOrder),  # over maxMktSz (12,000)
        ({"ordType": "limit", "sz": "1"}, "51204", ccxt.InvalidOrder),
        ({"ordType": "limit", "sz": "1", "px": "60000.05"}, "51000", ccxt.BadRequest),
        ({"instId": "NOPE-USDT-SWAP", "sz": "1"}, "51001", ccxt.BadSymbol),
    ],
    ids=["lot", "zero", "too-large", "no-price", "off-tick", "unknown-instrument"],
)
def test_malformed_orders_get_okx_codes(okx: ccxt.okx, sim: Simulator, fields, code, error):
    with pytest.raises(error) as caught:
        place(okx, **fields)
    assert okx_code(caught.value) == code
    assert sim.ledger() == []


def test_missing_credentials_are_authentication_errors(okx: ccxt.okx, sim: Simulator):
    url = "https://www.okx.com/api/v5/account/balance"
    with pytest.raises(ccxt.AuthenticationError) as caught:
        okx.fetch(url, "GET", {}, None)
    assert okx_code(caught.value) == "50103"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    headers = {"OK-ACCESS-KEY": "k", "OK-ACCESS-PASSPHRASE": "p", "OK-ACCESS-TIMESTAMP": stamp}
    with pytest.raises(ccxt.AuthenticationError) as caught:
        okx.fetch(url, "GET", {**headers, "OK-ACCESS-SIGN": "not-base64"}, None)
    assert okx_code(caught.value) == "50113"
    with pytest.raises(ccxt.AuthenticationError) as caught:
        okx.fetch(url, "GET", {**headers, "OK-ACCESS-PASSPHRASE": ""}, None)
    assert okx_code(caught.value) == "50104"


# --- faults ---------------------------------------------------------------------------------


def test_rate_limit_is_rate_limit_exceeded_with_retry_after(okx: ccxt.okx, sim: Simulator):
    sim.faults(fault(kind="rate_limit", count=1, retry_after_s=3))
    with pytest.raises(ccxt.RateLimitExceeded) as caught:
        okx.fetch_ticker(BTC)
    assert okx_code(caught.value) == "50011"
    assert okx.last_response_headers["Retry-After"] == "3"
    assert okx.fetch_ticker(BTC)["last"] > 0


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ({"kind": "ip_ban", "retry_after_s": 60}, ccxt.DDoSProtection),
        ({"kind": "server_error", "status": 503}, ccxt.ExchangeNotAvailable),
        ({"kind": "server_error", "status": 504}, ccxt.RequestTimeout),
        ({"kind": "unknown_status"}, ccxt.RequestTimeout),
    ],
    ids=["418", "503", "504", "unknown-status"],
)
def test_faults_map_to_ccxt_classes(okx: ccxt.okx, sim: Simulator, rule, error):
    sim.faults(fault(count=1, **rule))
    with pytest.raises(error):
        okx.create_order(BTC, "market", "buy", 1)
    assert sim.ledger() == []


def test_unknown_status_after_accept_leaves_the_order(okx: ccxt.okx, sim: Simulator):
    sim.faults(fault(kind="unknown_status", accept=True, count=1))
    with pytest.raises(ccxt.RequestTimeout) as caught:
        okx.create_order(BTC, "market", "buy", 1, None, {"clientOrderId": "unknown1"})
    assert okx_code(caught.value) == "50004"
    assert okx.fetch_order(None, BTC, {"clientOrderId": "unknown1"})["status"] == "closed"


def test_timeout_after_accept_leaves_a_filled_order(okx: ccxt.okx, sim: Simulator):
    sim.faults(fault(operation="create_order", kind="timeout_after_accept", hang_ms=HANG_MS))
    with pytest.raises(ccxt.RequestTimeout):
        okx.create_order(BTC, "market", "buy", 1, None, {"clientOrderId": "lost1"})
    sim.faults({})
    order = okx.fetch_order(None, BTC, {"clientOrderId": "lost1"})
    assert (order["status"], order["filled"]) == ("closed", 1)


def test_visibility_lag_hides_a_new_order_for_a_while(okx: ccxt.okx, sim: Simulator):
    sim.faults(fault(kind="visibility_lag", lag_ms=400, count=1))
    created = okx.create_order(BTC, "market", "buy", 1)
    with pytest.raises(ccxt.OrderNotFound):
        okx.fetch_order(created["id"], BTC)

    def visible() -> bool:
        try:
            return okx.fetch_order(created["id"], BTC)["status"] == "closed"
        except ccxt.OrderNotFound:
            return False

    wait_for(visible, 5, message="the order never became visible")


def test_partial_fill_cancels_the_rest(okx: ccxt.okx, sim: Simulator):
    sim.faults(fault(kind="partial_fill", fraction=0.5, count=1))
    created = okx.create_order(BTC, "market", "buy", 1)
    order = okx.fetch_order(created["id"], BTC)
    # OKX has no "expired": the unfilled rest of a market order is canceled
    assert (order["status"], order["filled"], order["amount"]) == ("canceled", 0.5, 1)
    assert order["info"]["cancelSource"] == "14"


def test_injected_insufficient_margin(okx: ccxt.okx, sim: Simulator):
    sim.faults(fault(kind="insufficient_margin", count=1))
    with pytest.raises(ccxt.InsufficientFunds):
        okx.create_order(BTC, "market", "buy", 1)
    assert sim.requests_for("okx", "create_order") == 1
