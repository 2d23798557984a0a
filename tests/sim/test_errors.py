"""Refusals map, through the real ccxt client, to the exception class the real exchange causes.

The simulator answers with each exchange's own error codes and messages;
these tests assert the class ccxt raises for them, because execq classifies
failures by ccxt class and must see the same class in simulation as in
production. The wire code is asserted too, so a wrong code cannot pass by
luck of a shared class.
"""

from __future__ import annotations

import json

import ccxt
import pytest

from tests.sim.conftest import Simulator, client_for

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
XRP = "XRP/USDT:USDT"


def wire_code(error: Exception) -> int:
    """The exchange's error code from ccxt's message (``<id> {json}``)."""
    body = json.loads(str(error).split(" ", 1)[1])
    return int(body.get("code", body.get("retCode")))


# --- Binance -------------------------------------------------------------------------


def test_binance_insufficient_margin_is_insufficient_funds(sim: Simulator):
    # Given an account with 100 USDT
    sim.reset(balance="100")
    binance = client_for("binance")
    # When an order needs 650 USDT of margin (1 BTC at 65,000, 10x)
    with pytest.raises(ccxt.InsufficientFunds) as caught:
        binance.create_order(BTC, "market", "buy", 0.1)
    # Then Binance's -2019 "Margin is insufficient." comes back and nothing was accepted
    assert wire_code(caught.value) == -2019
    assert sim.ledger() == []


def test_binance_unknown_order_is_order_not_found(binance: ccxt.Exchange, sim: Simulator):
    with pytest.raises(ccxt.OrderNotFound) as caught:
        binance.fetch_order("123456", BTC)
    assert wire_code(caught.value) == -2013
    with pytest.raises(ccxt.OrderNotFound) as caught:
        binance.cancel_order("123456", BTC)
    assert wire_code(caught.value) == -2011


def test_binance_cancelling_a_filled_order_is_order_not_found(
    binance: ccxt.Exchange, sim: Simulator
):
    order = binance.create_order(BTC, "market", "buy", 0.005)
    with pytest.raises(ccxt.OrderNotFound):
        binance.cancel_order(order["id"], BTC)


@pytest.mark.parametrize(
    ("position", "side", "amount"),
    [(None, "sell", 0.01), ("0.01", "buy", 0.01), ("0.01", "sell", 0.02)],
    ids=["no-position", "same-side", "would-flip"],
)
def test_binance_reduce_only_that_would_open_or_flip_is_invalid_order(
    binance: ccxt.Exchange, sim: Simulator, position, side, amount
):
    if position:
        sim.set_position("binance", BTC, position, "65000")
    with pytest.raises(ccxt.InvalidOrder) as caught:
        binance.create_order(BTC, "market", side, amount, None, {"reduceOnly": True})
    assert wire_code(caught.value) == -2022


def test_binance_min_notional_is_invalid_order(binance: ccxt.Exchange, sim: Simulator):
    # 0.001 ETH at 3,500 is 3.5 USDT, below Binance's 20 USDT minimum for ETH
    with pytest.raises(ccxt.InvalidOrder) as caught:
        binance.create_order(ETH, "market", "buy", 0.001)
    assert wire_code(caught.value) == -4164
    # A reduce-only order is exempt from the minimum, as on Binance
    sim.set_position("binance", ETH, "0.001", "3500")
    binance.create_order(ETH, "market", "sell", 0.001, None, {"reduceOnly": True})


def test_binance_quantity_below_minimum_is_bad_request(binance: ccxt.Exchange, sim: Simulator):
    # BTC's minimum is 0.005 here (step 0.001)
    with pytest.raises(ccxt.BadRequest) as caught:
        binance.create_order(BTC, "market", "buy", 0.002)
    assert wire_code(caught.value) == -4004


def signed_binance_order(binance: ccxt.Exchange, **fields: str) -> dict:
    """Bypass ccxt's own rounding: the implicit API sends the fields as given, signed."""
    return binance.fapiPrivatePostOrder({"symbol": "BTCUSDT", "side": "BUY", **fields})


def test_binance_too_many_decimals_is_bad_request(binance: ccxt.Exchange, sim: Simulator):
    with pytest.raises(ccxt.BadRequest) as caught:
        signed_binance_order(binance, type="MARKET", quantity="0.0051")
    assert wire_code(caught.value) == -1111


def test_binance_price_off_the_tick_is_bad_request(binance: ccxt.Exchange, sim: Simulator):
    with pytest.raises(ccxt.BadRequest) as caught:
        signed_binance_order(
            binance, type="LIMIT", quantity="0.005", price="60000.05", timeInForce="GTC"
        )
    assert wire_code(caught.value) == -4014


def test_binance_unknown_symbol_is_bad_symbol(binance: ccxt.Exchange, sim: Simulator):
    with pytest.raises(ccxt.BadSymbol) as caught:
        binance.fapiPrivatePostOrder(
            {"symbol": "FOOUSDT", "side": "BUY", "type": "MARKET", "quantity": "1"}
        )
    assert wire_code(caught.value) == -1121


def test_binance_client_id_is_unique_only_among_open_orders(binance: ccxt.Exchange, sim: Simulator):
    # Given an open limit order with client id "dup-open"
    binance.create_order(ETH, "limit", "buy", 0.1, 3000, {"clientOrderId": "dup-open"})
    # When the same id is sent again
    with pytest.raises(ccxt.InvalidOrder) as caught:
        binance.create_order(ETH, "limit", "buy", 0.1, 3000, {"clientOrderId": "dup-open"})
    # Then Binance refuses it as a duplicate
    assert wire_code(caught.value) == -4116


def test_binance_reuses_the_client_id_of_a_filled_order(binance: ccxt.Exchange, sim: Simulator):
    # Given a market order with client id "reused" that has filled
    binance.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "reused"})
    # When the same client id is sent again (a blind resubmit)
    binance.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "reused"})
    # Then Binance takes it as a new order: the position doubled
    assert len(sim.orders("binance", "reused")) == 2
    assert sim.position("binance", BTC)["size"] == "0.02"
    # And a lookup by client id finds the newest one
    order = binance.fetch_order(None, BTC, {"clientOrderId": "reused"})
    assert order["id"] == sim.orders("binance", "reused")[-1]["orderId"]


def test_binance_client_id_longer_than_36_is_bad_request(binance: ccxt.Exchange, sim: Simulator):
    with pytest.raises(ccxt.BadRequest) as caught:
        binance.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "x" * 37})
    assert wire_code(caught.value) == -4015


# --- Bybit ---------------------------------------------------------------------------


def test_bybit_insufficient_balance_is_insufficient_funds(sim: Simulator):
    sim.reset(balance="100")
    bybit = client_for("bybit")
    with pytest.raises(ccxt.InsufficientFunds) as caught:
        bybit.create_order(BTC, "market", "buy", 0.1)
    assert wire_code(caught.value) == 110007
    assert sim.ledger() == []


def test_bybit_order_link_id_is_unique_forever(bybit: ccxt.Exchange, sim: Simulator):
    # Given a filled order with orderLinkId "once"
    bybit.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "once"})
    # When it is sent again
    with pytest.raises(ccxt.InvalidOrder) as caught:
        bybit.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "once"})
    # Then Bybit refuses the duplicate and the position did not double
    assert wire_code(caught.value) == 110072
    assert sim.position("bybit", BTC)["size"] == "0.01"


@pytest.mark.parametrize(
    ("position", "side", "amount"),
    [(None, "sell", 0.01), ("0.01", "buy", 0.01), ("0.01", "sell", 0.02)],
    ids=["no-position", "same-side", "would-flip"],
)
def test_bybit_reduce_only_that_would_open_or_flip_is_invalid_order(
    bybit: ccxt.Exchange, sim: Simulator, position, side, amount
):
    if position:
        sim.set_position("bybit", BTC, position, "65000")
    with pytest.raises(ccxt.InvalidOrder) as caught:
        bybit.create_order(BTC, "market", side, amount, None, {"reduceOnly": True})
    assert wire_code(caught.value) == 110017


def test_bybit_unknown_order_is_order_not_found(bybit: ccxt.Exchange, sim: Simulator):
    with pytest.raises(ccxt.OrderNotFound) as caught:
        bybit.cancel_order("0b4c1c1e-0000-4000-8000-000000000000", BTC)
    assert wire_code(caught.value) == 110001
    # fetch_order finds nothing and ccxt says so with the same class
    with pytest.raises(ccxt.OrderNotFound):
        bybit.fetch_order("0b4c1c1e-0000-4000-8000-000000000000", BTC, {"acknowledged": True})


def test_bybit_quantity_below_minimum_is_bad_request(bybit: ccxt.Exchange, sim: Simulator):
    with pytest.raises(ccxt.BadRequest) as caught:
        bybit.create_order(BTC, "market", "buy", 0.002)
    assert wire_code(caught.value) == 10001


def test_bybit_min_order_value_is_invalid_order(bybit: ccxt.Exchange, sim: Simulator):
    # 1 XRP at 0.6 is worth 0.6 USDT, below Bybit's 5 USDT minimum
    with pytest.raises(ccxt.InvalidOrder) as caught:
        bybit.create_order(XRP, "market", "buy", 1)
    assert wire_code(caught.value) == 110094


def test_bybit_too_many_decimals_is_bad_request(bybit: ccxt.Exchange, sim: Simulator):
    with pytest.raises(ccxt.BadRequest) as caught:
        bybit.privatePostV5OrderCreate(
            {
                "category": "linear",
                "symbol": "BTCUSDT",
                "side": "Buy",
                "orderType": "Market",
                "qty": "0.0051",
            }
        )
    assert wire_code(caught.value) == 10001


# --- authentication ------------------------------------------------------------------


def test_binance_private_call_without_api_key_is_authentication_error(
    binance: ccxt.Exchange, sim: Simulator
):
    # ccxt itself never omits the key, so the request is sent through the client's
    # own fetch (same transport, same error mapping) without the key header.
    url = "https://fapi.binance.com/fapi/v3/account?timestamp=1&signature=" + "a" * 64
    with pytest.raises(ccxt.AuthenticationError) as caught:
        binance.fetch(url, "GET", {}, None)
    assert wire_code(caught.value) == -2014


def test_binance_private_call_without_signature_is_refused(binance: ccxt.Exchange, sim: Simulator):
    url = "https://fapi.binance.com/fapi/v3/account?timestamp=1"
    with pytest.raises(ccxt.BadRequest) as caught:
        binance.fetch(url, "GET", {"X-MBX-APIKEY": "sim-key"}, None)
    assert wire_code(caught.value) == -1102
    url = "https://fapi.binance.com/fapi/v3/account?timestamp=1&signature=nothex"
    with pytest.raises(ccxt.AuthenticationError) as caught:
        binance.fetch(url, "GET", {"X-MBX-APIKEY": "sim-key"}, None)
    assert wire_code(caught.value) == -1022


def test_bybit_private_call_without_key_or_signature_is_authentication_error(
    bybit: ccxt.Exchange, sim: Simulator
):
    url = "https://api.bybit.com/v5/account/wallet-balance?accountType=UNIFIED"
    with pytest.raises(ccxt.AuthenticationError) as caught:
        bybit.fetch(url, "GET", {}, None)
    assert wire_code(caught.value) == 10003
    headers = {"X-BAPI-API-KEY": "sim-key", "X-BAPI-TIMESTAMP": "1"}
    with pytest.raises(ccxt.AuthenticationError) as caught:
        bybit.fetch(url, "GET", headers, None)
    assert wire_code(caught.value) == 10004


def test_public_endpoints_need_no_key(sim: Simulator):
    assert sim.raw("GET", "/fapi/v1/ticker/price?symbol=BTCUSDT").json()["symbol"] == "BTCUSDT"
    body = sim.raw("GET", "/v5/market/tickers?category=linear&symbol=BTCUSDT").json()
    assert body["retCode"] == 0
