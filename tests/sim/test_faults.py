"""Every fault kind, driven through a real ccxt client.

A fault plan is posted to the simulator; the next requests misbehave the way
real exchanges do. The tests check what the client sees (the ccxt exception
class, the delay) and what really happened on the exchange (ledger, positions),
which is exactly the gap execq has to bridge.
"""

from __future__ import annotations

import time

import ccxt
import pytest

from tests.conftest import wait_for
from tests.sim.conftest import HANG_MS, Simulator, client_for, fetch_order_params, sim_name

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


def fault(**rule) -> dict:
    return {"rules": [rule]}


def test_latency_delays_every_matching_request(bybit: ccxt.Exchange, sim: Simulator):
    # Given 300 ms of latency on Bybit tickers only
    sim.faults(fault(exchange="bybit", operation="tickers", kind="latency", latency_ms=300))
    # When a ticker is fetched, it takes at least 300 ms
    started = time.monotonic()
    bybit.fetch_ticker(BTC)
    assert time.monotonic() - started >= 0.3
    assert [rule["fired"] for rule in sim.fault_rules()] == [1]
    # While a request of another operation is not delayed: the rule does not fire for it
    bybit.fetch_positions([BTC])
    assert [rule["fired"] for rule in sim.fault_rules()] == [1]


def test_http_429_is_rate_limited_with_retry_after(exchange: ccxt.Exchange, sim: Simulator):
    sim.faults(fault(kind="rate_limit", count=1, retry_after_s=7))
    # Binance's 429 is DDoSProtection in ccxt, Bybit's RateLimitExceeded
    with pytest.raises((ccxt.RateLimitExceeded, ccxt.DDoSProtection)) as caught:
        exchange.fetch_ticker(BTC)
    expected = ccxt.DDoSProtection if exchange.id == "binanceusdm" else ccxt.RateLimitExceeded
    assert type(caught.value) is expected
    assert exchange.last_response_headers["Retry-After"] == "7"
    # count=1: the next request goes through
    assert exchange.fetch_ticker(BTC)["last"] > 0


def test_http_418_is_ddos_protection(exchange: ccxt.Exchange, sim: Simulator):
    sim.faults(fault(kind="ip_ban", count=1, retry_after_s=60))
    with pytest.raises(ccxt.DDoSProtection):
        exchange.fetch_balance()
    assert exchange.last_response_headers["Retry-After"] == "60"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (502, ccxt.ExchangeNotAvailable),
        (503, ccxt.ExchangeNotAvailable),
        (504, ccxt.RequestTimeout),
    ],
)
def test_5xx_from_the_gateway(exchange: ccxt.Exchange, sim: Simulator, status, expected):
    sim.faults(fault(kind="server_error", status=status, count=1))
    with pytest.raises(expected):
        exchange.fetch_positions([BTC])


def test_5xx_after_the_order_was_accepted(exchange: ccxt.Exchange, sim: Simulator):
    # Given the next create answers 502 although the exchange executed it
    sim.faults(fault(kind="server_error", operation="create_order", status=502, accept=True))
    # When an order is sent
    with pytest.raises(ccxt.ExchangeNotAvailable):
        exchange.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "gw-502"})
    # Then the order exists and filled: the failure said nothing about the outcome
    (order,) = sim.orders(sim_name(exchange), "gw-502")
    assert order["status"] == "closed"


def test_binance_unknown_execution_status(binance: ccxt.Exchange, sim: Simulator):
    # Binance -1007 "execution status unknown" is a RequestTimeout in ccxt
    sim.faults(fault(exchange="binance", kind="unknown_status", operation="create_order"))
    with pytest.raises(ccxt.RequestTimeout):
        binance.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "unk-1"})
    assert sim.orders("binance", "unk-1") == []
    # With accept=true the order went through in spite of the answer
    sim.faults(
        fault(exchange="binance", kind="unknown_status", operation="create_order", accept=True)
    )
    with pytest.raises(ccxt.RequestTimeout):
        binance.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "unk-2"})
    assert [o["status"] for o in sim.orders("binance", "unk-2")] == ["closed"]


def test_bybit_unknown_execution_status(bybit: ccxt.Exchange, sim: Simulator):
    # Bybit's 10000 "Server Timeout" has no specific ccxt class: a plain ExchangeError
    sim.faults(
        fault(exchange="bybit", kind="unknown_status", operation="create_order", accept=True)
    )
    with pytest.raises(ccxt.ExchangeError) as caught:
        bybit.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "unk-b"})
    assert type(caught.value) is ccxt.ExchangeError
    assert '"retCode":10000' in str(caught.value)
    assert [o["status"] for o in sim.orders("bybit", "unk-b")] == ["closed"]


def test_timeout_before_accept_leaves_no_order(exchange: ccxt.Exchange, sim: Simulator):
    # Given the next create hangs for longer than the client waits, then drops
    sim.faults(
        fault(kind="timeout_before_accept", operation="create_order", count=1, hang_ms=HANG_MS)
    )
    # When an order is sent, the client times out
    with pytest.raises(ccxt.RequestTimeout):
        exchange.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "tb-1"})
    # Then the exchange never took it: no order, no position, a lookup finds nothing
    assert sim.orders(sim_name(exchange)) == []
    assert sim.positions() == []
    client_id = {"orderLinkId": "tb-1"} if exchange.id == "bybit" else {"clientOrderId": "tb-1"}
    assert exchange.fetch_open_orders(BTC, None, None, client_id) == []


def test_timeout_after_accept_leaves_a_filled_order(exchange: ccxt.Exchange, sim: Simulator):
    name = sim_name(exchange)
    # Given the next create on this exchange is executed but its answer never arrives
    sim.faults(fault(exchange=name, kind="timeout_after_accept", operation="create_order", count=1))
    # When an order is sent, the client times out
    with pytest.raises(ccxt.RequestTimeout):
        exchange.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "ta-1"})
    # Then the order was filled and the position is open
    assert [o["status"] for o in sim.orders(name, "ta-1")] == ["closed"]
    assert sim.position(name, BTC)["size"] == "0.01"
    # And it can be found by its client order id
    if exchange.id == "bybit":
        (found,) = exchange.fetch_closed_orders(BTC, None, None, {"orderLinkId": "ta-1"})
    else:
        found = exchange.fetch_order(None, BTC, {"clientOrderId": "ta-1"})
    assert found["status"] == "closed" and found["filled"] == pytest.approx(0.01)


def test_a_dropped_connection_after_accept_is_a_network_error(sim: Simulator):
    # A client that waits longer than the hang sees the connection cut instead
    binance = client_for("binance", timeout_ms=5000)
    sim.faults(fault(kind="timeout_after_accept", operation="create_order", hang_ms=200, count=1))
    with pytest.raises(ccxt.NetworkError) as caught:
        binance.create_order(BTC, "market", "buy", 0.01)
    assert not isinstance(caught.value, ccxt.RequestTimeout)
    assert len(sim.orders("binance")) == 1


def test_visibility_lag_hides_a_new_order_for_a_while(exchange: ccxt.Exchange, sim: Simulator):
    # Given new orders stay invisible for 400 ms
    sim.faults(fault(kind="visibility_lag", lag_ms=400))
    started = time.monotonic()
    order = exchange.create_order(ETH, "limit", "buy", 0.1, 3000)
    # Then right after the create the exchange denies knowing it
    with pytest.raises(ccxt.OrderNotFound):
        exchange.fetch_order(order["id"], ETH, fetch_order_params(exchange))
    assert exchange.fetch_open_orders(ETH) == []
    # And it shows up once the lag has passed (polling, not sleeping)
    wait_for(lambda: exchange.fetch_open_orders(ETH), timeout_s=5)
    assert time.monotonic() - started >= 0.4
    assert exchange.fetch_order(order["id"], ETH, fetch_order_params(exchange))["status"] == "open"


def test_positions_lag_reports_an_old_state(exchange: ccxt.Exchange, sim: Simulator):
    # Given positions are reported as they were 400 ms ago
    sim.faults(fault(kind="positions_lag", lag_ms=400))
    # When a position opens
    exchange.create_order(BTC, "market", "buy", 0.01)
    started = time.monotonic()

    def reported_contracts() -> float:
        return sum(p["contracts"] or 0 for p in exchange.fetch_positions([BTC]))

    # Then the positions endpoint still says flat
    assert reported_contracts() == 0
    # And catches up after the lag, while the exchange itself was never behind
    wait_for(lambda: reported_contracts() == pytest.approx(0.01), timeout_s=5)
    assert time.monotonic() - started >= 0.3
    assert sim.position(sim_name(exchange), BTC)["size"] == "0.01"


def test_binance_partial_fill_expires_the_rest(binance: ccxt.Exchange, sim: Simulator):
    sim.faults(fault(exchange="binance", kind="partial_fill", fraction="0.4"))
    order = binance.create_order(BTC, "market", "buy", 0.01)
    assert order["status"] == "expired"
    assert order["filled"] == pytest.approx(0.004)
    assert order["remaining"] == pytest.approx(0.006)
    assert sim.position("binance", BTC)["size"] == "0.004"


def test_bybit_partial_fill_is_closed_with_less_filled(bybit: ccxt.Exchange, sim: Simulator):
    sim.faults(fault(exchange="bybit", kind="partial_fill", fraction="0.5"))
    created = bybit.create_order(BTC, "market", "buy", 0.01)
    order = bybit.fetch_order(created["id"], BTC, {"acknowledged": True})
    # PartiallyFilledCanceled parses as "closed": only `filled` tells the truth
    assert order["info"]["orderStatus"] == "PartiallyFilledCanceled"
    assert order["status"] == "closed"
    assert order["filled"] == pytest.approx(0.005)
    assert sim.position("bybit", BTC)["size"] == "0.005"


def test_injected_insufficient_margin(exchange: ccxt.Exchange, sim: Simulator):
    sim.faults(fault(kind="insufficient_margin", count=1))
    with pytest.raises(ccxt.InsufficientFunds):
        exchange.create_order(BTC, "market", "buy", 0.01)
    assert sim.ledger() == []
    exchange.create_order(BTC, "market", "buy", 0.01)
    assert len(sim.ledger()) == 1


def test_injected_auth_refusal_refuses_the_key_on_creates_only(
    exchange: ccxt.Exchange, sim: Simulator
):
    # Given the exchange refuses the account's key for trading (reads still work)
    sim.faults(fault(kind="auth_refused"))
    # Then a create raises ccxt's authentication error (Binance's -2015 is read as a
    # temporary ban once the client has authenticated before) and places nothing
    with pytest.raises((ccxt.AuthenticationError, ccxt.DDoSProtection)):
        exchange.create_order(BTC, "market", "buy", 0.01)
    assert sim.ledger() == []
    exchange.fetch_positions([BTC])


def test_rules_apply_only_to_their_exchange_and_operation(sim: Simulator):
    binance, bybit = client_for("binance"), client_for("bybit")
    sim.faults(fault(exchange="binance", operation="create_order", kind="insufficient_margin"))
    # Bybit creates and Binance reads are untouched
    bybit.create_order(BTC, "market", "buy", 0.01)
    assert binance.fetch_positions() == []
    with pytest.raises(ccxt.InsufficientFunds):
        binance.create_order(BTC, "market", "buy", 0.01)


def test_a_symbol_narrows_a_rule(binance: ccxt.Exchange, sim: Simulator):
    sim.faults(fault(kind="insufficient_margin", symbol=ETH))
    binance.create_order(BTC, "market", "buy", 0.01)
    with pytest.raises(ccxt.InsufficientFunds):
        binance.create_order(ETH, "market", "buy", 0.01)


def test_probability_is_deterministic_under_a_seed(binance: ccxt.Exchange, sim: Simulator):
    def pattern() -> list[bool]:
        sim.faults({"seed": 1234, "rules": [{"kind": "rate_limit", "probability": 0.5}]})
        outcomes = []
        for _ in range(20):
            try:
                binance.fetch_ticker(BTC)
                outcomes.append(True)
            except ccxt.DDoSProtection:
                outcomes.append(False)
        return outcomes

    first, second = pattern(), pattern()
    assert first == second
    assert 0 < first.count(False) < 20


def test_count_and_probability_together_cap_the_firings(binance: ccxt.Exchange, sim: Simulator):
    sim.faults({"seed": 7, "rules": [{"kind": "rate_limit", "probability": 0.9, "count": 2}]})
    failures = 0
    for _ in range(10):
        try:
            binance.fetch_ticker(BTC)
        except ccxt.DDoSProtection:
            failures += 1
    assert failures == 2
    assert sim.full_stats()["faults"][0]["fired"] == 2


def test_posting_a_plan_replaces_the_previous_one(binance: ccxt.Exchange, sim: Simulator):
    sim.faults(fault(kind="rate_limit"))
    sim.faults({})
    assert binance.fetch_ticker(BTC)["last"] > 0


def test_a_malformed_plan_is_refused_with_the_reason(sim: Simulator):
    response = sim.raw("POST", "/_sim/faults", json={"rules": [{"kind": "meteor"}]})
    assert response.status_code == 400
    assert "kind" in response.json()["error"]
    response = sim.raw("POST", "/_sim/faults", json={"rules": [{"kind": "latency", "count": -1}]})
    assert response.status_code == 400
