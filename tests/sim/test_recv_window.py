"""A signed request is accepted only inside its validity window, judged when it arrives.

Each exchange refuses a request whose timestamp is too old (or too far
ahead) when the request reaches it: Binance against ``recvWindow``, Bybit
against ``X-BAPI-RECV-WINDOW``, OKX against 30 s and the optional ``expTime``
header. The simulator judges on arrival at the matching engine, after any
injected latency, so a latency fault can hold a request past its window. A
refused request never executes: the ledger stays empty.
"""

from __future__ import annotations

import json
import time

import ccxt
import pytest

from tests.sim.conftest import Simulator, okx_client

BTC = "BTC/USDT:USDT"


def hold_creates(sim: Simulator, exchange: str, latency_ms: int) -> None:
    """Every create on ``exchange`` reaches the engine ``latency_ms`` after it was sent."""
    rule = {"exchange": exchange, "operation": "create_order", "kind": "latency"}
    sim.faults({"rules": [{**rule, "latency_ms": latency_ms}]})


def code(error: Exception) -> str:
    body = json.loads(str(error).split(" ", 1)[1])
    return str(body.get("code", body.get("retCode")))


# --- Binance USDⓈ-M ---------------------------------------------------------------------


def test_binance_request_held_past_its_recv_window_is_refused(
    binance: ccxt.Exchange, sim: Simulator
):
    # Given requests signed with a 300 ms recvWindow, and creates held 600 ms on the way
    binance.options["recvWindow"] = 300
    hold_creates(sim, "binance", 600)
    # When an order is sent, Binance refuses it on arrival (-1021, ccxt InvalidNonce)
    with pytest.raises(ccxt.InvalidNonce) as caught:
        binance.create_order(BTC, "market", "buy", 0.005)
    assert code(caught.value) == "-1021"
    assert "outside of the recvWindow" in str(caught.value)
    # And it never executed
    assert sim.ledger() == []
    # While a request arriving inside its window executes
    hold_creates(sim, "binance", 50)
    binance.create_order(BTC, "market", "buy", 0.005)
    assert len(sim.ledger()) == 1


def test_binance_window_is_5000_ms_when_the_request_names_none(
    binance: ccxt.Exchange, sim: Simulator
):
    # ccxt sends recvWindow=10000 unless told otherwise; without it Binance allows 5000 ms
    binance.options["recvWindow"] = None
    binance.options["timeDifference"] = 5200  # the client's clock is 5.2 s behind
    with pytest.raises(ccxt.InvalidNonce):
        binance.create_order(BTC, "market", "buy", 0.005)
    assert "recvWindow" not in binance.last_request_body
    binance.options["timeDifference"] = 4000
    binance.create_order(BTC, "market", "buy", 0.005)
    assert len(sim.ledger()) == 1


def test_binance_timestamp_ahead_of_the_server_is_refused(binance: ccxt.Exchange, sim: Simulator):
    binance.options["timeDifference"] = -1500  # the client's clock is 1.5 s ahead
    with pytest.raises(ccxt.InvalidNonce) as caught:
        binance.fetch_balance()
    assert code(caught.value) == "-1021"
    assert "ahead of the server's time" in str(caught.value)


def test_binance_recv_window_above_60000_is_refused(binance: ccxt.Exchange, sim: Simulator):
    binance.options["recvWindow"] = 70_000
    with pytest.raises(ccxt.ExchangeError) as caught:
        binance.create_order(BTC, "market", "buy", 0.005)
    # ccxt 4.5 maps -1131 for spot and options only: on USDⓈ-M it is a plain ExchangeError
    assert type(caught.value) is ccxt.ExchangeError
    assert code(caught.value) == "-1131"
    assert sim.ledger() == []


# --- Bybit v5 ---------------------------------------------------------------------------


def test_bybit_request_held_past_its_recv_window_is_refused(bybit: ccxt.Exchange, sim: Simulator):
    bybit.options["recvWindow"] = 300
    hold_creates(sim, "bybit", 600)
    with pytest.raises(ccxt.InvalidNonce) as caught:
        bybit.create_order(BTC, "market", "buy", 0.005)
    assert code(caught.value) == "10002"
    assert "recv_window[300]" in str(caught.value)
    assert sim.ledger() == []
    hold_creates(sim, "bybit", 50)
    bybit.create_order(BTC, "market", "buy", 0.005)
    assert len(sim.ledger()) == 1


def test_bybit_timestamp_ahead_of_the_server_is_refused(bybit: ccxt.Exchange, sim: Simulator):
    bybit.options["timeDifference"] = -1500
    with pytest.raises(ccxt.InvalidNonce) as caught:
        bybit.fetch_positions([BTC])
    assert code(caught.value) == "10002"


# --- OKX v5 -------------------------------------------------------------------------------


def test_okx_request_timestamp_older_than_30_s_is_refused(sim: Simulator):
    # Given a client whose clock is 29.7 s behind, and creates held 600 ms on the way
    okx = okx_client(timeDifference=29_700)
    okx.load_markets()
    hold_creates(sim, "okx", 600)
    # When an order is sent it arrives 30.3 s after its OK-ACCESS-TIMESTAMP: 50102, InvalidNonce
    with pytest.raises(ccxt.InvalidNonce) as caught:
        okx.create_order(BTC, "market", "buy", 1)
    assert code(caught.value) == "50102"
    assert sim.ledger() == []
    # Without the hold it arrives inside the 30 s and executes
    sim.faults({})
    okx.create_order(BTC, "market", "buy", 1)
    assert len(sim.ledger()) == 1


def test_okx_timestamp_ahead_of_the_server_is_refused(sim: Simulator):
    okx = okx_client(timeDifference=-31_000)
    with pytest.raises(ccxt.InvalidNonce):
        okx.fetch_balance()


def test_okx_order_arriving_after_its_exp_time_is_refused(okx: ccxt.okx, sim: Simulator):
    # Given an order request that expires 300 ms after it is sent, held 600 ms on the way
    hold_creates(sim, "okx", 600)
    okx.headers = {"expTime": str(time.time_ns() // 1_000_000 + 300)}
    # When it arrives, OKX refuses it: 50036, which ccxt 4.5 does not map (ExchangeError)
    with pytest.raises(ccxt.ExchangeError) as caught:
        okx.create_order(BTC, "market", "buy", 1)
    assert type(caught.value) is ccxt.ExchangeError
    assert code(caught.value) == "50036"
    assert sim.ledger() == []
    # One that arrives in time executes
    okx.headers = {"expTime": str(time.time_ns() // 1_000_000 + 5000)}
    okx.create_order(BTC, "market", "buy", 1)
    assert len(sim.ledger()) == 1


def test_okx_exp_time_applies_to_order_placement_only(okx: ccxt.okx, sim: Simulator):
    okx.headers = {"expTime": str(time.time_ns() // 1_000_000 - 1000)}
    assert okx.fetch_positions() == []
    with pytest.raises(ccxt.ExchangeError):
        okx.create_order(BTC, "market", "buy", 1)
