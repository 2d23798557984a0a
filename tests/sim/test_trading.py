"""Trading on the simulator through real ccxt clients: fills, resting orders, positions.

Each test reads Given / When / Then and checks what a trader would see: the
order ccxt returns, the position the exchange reports, the simulator's ledger.
"""

from __future__ import annotations

import time
from decimal import Decimal

import ccxt
import pytest

from tests.sim.conftest import Simulator, fetch_order_params, sim_name

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


def position_size(client: ccxt.Exchange, symbol: str) -> Decimal:
    for position in client.fetch_positions([symbol]):
        if position["symbol"] == symbol and position["contracts"]:
            sign = -1 if position["side"] == "short" else 1
            return sign * Decimal(str(position["contracts"]))
    return Decimal(0)


def test_a_market_order_fills_at_the_current_price(exchange: ccxt.Exchange, sim: Simulator):
    # Given BTC trades at 65,000
    sim.prices({"symbol": BTC, "price": "65000"})
    # When a market buy of 0.01 BTC is sent with a client order id
    created = exchange.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "mkt-1"})
    # Then the exchange reports the order filled in full at 65,000
    order = exchange.fetch_order(created["id"], BTC, fetch_order_params(exchange))
    assert order["status"] == "closed"
    assert order["filled"] == pytest.approx(0.01)
    assert order["average"] == pytest.approx(65000)
    assert order["clientOrderId"] == "mkt-1"
    # And the account holds a 0.01 BTC long
    assert position_size(exchange, BTC) == Decimal("0.010")
    assert sim.position(sim_name(exchange), BTC)["entryPrice"] == "65000"


def test_binance_returns_the_fill_in_the_create_response(binance: ccxt.Exchange, sim: Simulator):
    # When a market order is created (ccxt asks for newOrderRespType=RESULT)
    order = binance.create_order(BTC, "market", "sell", 0.005)
    # Then the response already says it is filled, and at what price
    assert order["status"] == "closed"
    assert order["filled"] == pytest.approx(0.005)
    assert order["average"] == pytest.approx(65000)


def test_bybit_create_response_carries_ids_only(bybit: ccxt.Exchange, sim: Simulator):
    # When a market order is created on Bybit
    order = bybit.create_order(BTC, "market", "buy", 0.005, None, {"clientOrderId": "ids-only"})
    # Then the response has ids but says nothing about status or fill, as on the real v5 API
    assert order["id"] and order["clientOrderId"] == "ids-only"
    assert order["status"] is None and order["filled"] is None
    # And the fill is there when the order is fetched
    fetched = bybit.fetch_order(order["id"], BTC, {"acknowledged": True})
    assert fetched["status"] == "closed" and fetched["filled"] == pytest.approx(0.005)


def test_bybit_fetch_order_needs_the_acknowledgement(bybit: ccxt.Exchange, sim: Simulator):
    order = bybit.create_order(BTC, "market", "buy", 0.005)
    with pytest.raises(ccxt.ArgumentsRequired):
        bybit.fetch_order(order["id"], BTC)


def test_a_limit_order_rests_until_the_price_crosses(exchange: ccxt.Exchange, sim: Simulator):
    # Given ETH at 3,500 and a resting buy at 3,400
    order = exchange.create_order(ETH, "limit", "buy", 0.1, 3400, {"clientOrderId": "rest-1"})
    open_orders = exchange.fetch_open_orders(ETH)
    assert [o["clientOrderId"] for o in open_orders] == ["rest-1"]
    assert open_orders[0]["status"] == "open" and open_orders[0]["filled"] == 0
    # When the price falls to 3,390
    sim.prices({"symbol": ETH, "price": "3390"})
    # Then the order has filled at its limit price and left the book
    filled = exchange.fetch_order(order["id"], ETH, fetch_order_params(exchange))
    assert filled["status"] == "closed"
    assert filled["average"] == pytest.approx(3400)
    assert exchange.fetch_open_orders(ETH) == []
    assert position_size(exchange, ETH) == Decimal("0.1")


def test_an_ioc_limit_that_cannot_fill_ends_without_a_fill(exchange: ccxt.Exchange, sim: Simulator):
    order = exchange.create_order(ETH, "limit", "buy", 0.1, 3000, {"timeInForce": "IOC"})
    fetched = exchange.fetch_order(order["id"], ETH, fetch_order_params(exchange))
    # Binance calls it expired, Bybit cancelled; either way nothing filled
    assert fetched["status"] in ("expired", "canceled")
    assert fetched["filled"] == 0
    assert exchange.fetch_open_orders(ETH) == []


def test_cancel_removes_a_resting_order(exchange: ccxt.Exchange, sim: Simulator):
    order = exchange.create_order(ETH, "limit", "sell", 0.1, 3600)
    exchange.cancel_order(order["id"], ETH)
    fetched = exchange.fetch_order(order["id"], ETH, fetch_order_params(exchange))
    assert fetched["status"] == "canceled"
    assert exchange.fetch_open_orders(ETH) == []
    assert sim.orders(sim_name(exchange))[0]["status"] == "canceled"


def test_positions_average_in_and_realize_pnl_on_a_flip(exchange: ccxt.Exchange, sim: Simulator):
    name = sim_name(exchange)
    # Given two buys of 0.01 BTC at 65,000 and 66,000
    exchange.create_order(BTC, "market", "buy", 0.01)
    sim.prices({"symbol": BTC, "price": "66000"})
    exchange.create_order(BTC, "market", "buy", 0.01)
    assert sim.position(name, BTC)["entryPrice"] == "65500"
    # When 0.03 BTC is sold at 67,000
    sim.prices({"symbol": BTC, "price": "67000"})
    exchange.create_order(BTC, "market", "sell", 0.03)
    # Then the long is closed with 0.02 x 1,500 = 30 USDT profit, and a 0.01 short opens at 67,000
    position = sim.position(name, BTC)
    assert position["size"] == "-0.01"
    assert position["side"] == "short"
    assert position["entryPrice"] == "67000"
    assert Decimal(position["realizedPnl"]) == Decimal("30")
    assert position_size(exchange, BTC) == Decimal("-0.01")


def test_a_reduce_only_order_closes_the_position(exchange: ccxt.Exchange, sim: Simulator):
    exchange.create_order(BTC, "market", "buy", 0.02)
    exchange.create_order(BTC, "market", "sell", 0.02, None, {"reduceOnly": True})
    assert sim.position(sim_name(exchange), BTC) is None
    assert position_size(exchange, BTC) == 0
    assert [o["reduceOnly"] for o in sim.orders(sim_name(exchange))] == [False, True]


def test_bybit_lists_a_flat_symbol_but_not_flat_coins(bybit: ccxt.Exchange, sim: Simulator):
    # Asked for one symbol, Bybit returns its row even when flat
    rows = bybit.fetch_positions([ETH])
    assert len(rows) == 1 and rows[0]["contracts"] == 0
    # Asked by settle coin it returns open positions only
    bybit.create_order(BTC, "market", "sell", 0.005)
    rows = bybit.fetch_positions(None, {"settleCoin": "USDT"})
    assert [(r["symbol"], r["side"]) for r in rows] == [(BTC, "short")]


def test_binance_lists_open_positions_only(binance: ccxt.Exchange, sim: Simulator):
    binance.create_order(BTC, "market", "sell", 0.005)
    rows = binance.fetch_positions()
    assert [(r["symbol"], r["side"], r["contracts"]) for r in rows] == [(BTC, "short", 0.005)]


def test_a_position_set_by_hand_is_what_the_exchange_reports(
    exchange: ccxt.Exchange, sim: Simulator
):
    # Given someone opened 0.5 ETH short outside execq at 3,600
    sim.set_position(sim_name(exchange), ETH, "-0.5", "3600")
    # Then ccxt sees exactly that position
    (row,) = [r for r in exchange.fetch_positions([ETH]) if r["contracts"]]
    assert row["side"] == "short" and row["contracts"] == pytest.approx(0.5)
    assert row["entryPrice"] == pytest.approx(3600)
    # And it can be closed with a reduce-only order like any other
    exchange.create_order(ETH, "market", "buy", 0.5, None, {"reduceOnly": True})
    assert sim.position(sim_name(exchange), ETH) is None


def test_the_balance_starts_large_and_pays_for_fees(exchange: ccxt.Exchange, sim: Simulator):
    balance = exchange.fetch_balance()
    assert balance["USDT"]["total"] == pytest.approx(1_000_000)
    exchange.create_order(BTC, "market", "buy", 0.01)
    after = exchange.fetch_balance()
    # The taker fee left the wallet; margin for the position is in use
    assert after["USDT"]["total"] < 1_000_000
    assert after["USDT"]["free"] < after["USDT"]["total"]


def test_tickers_follow_the_prices_set_by_the_admin_api(exchange: ccxt.Exchange, sim: Simulator):
    sim.prices({"symbol": ETH, "price": "3456.78"})
    assert exchange.fetch_ticker(ETH)["last"] == pytest.approx(3456.78)
    tickers = exchange.fetch_tickers([BTC, ETH])
    assert set(tickers) == {BTC, ETH}
    assert tickers[BTC]["last"] == pytest.approx(65000)


def test_markets_carry_the_trading_rules(exchange: ccxt.Exchange, sim: Simulator):
    assert set(exchange.markets) >= {
        "BTC/USDT:USDT",
        "ETH/USDT:USDT",
        "SOL/USDT:USDT",
        "XRP/USDT:USDT",
        "DOGE/USDT:USDT",
    }
    assert all(market["linear"] and market["swap"] for market in exchange.markets.values())
    btc = exchange.market(BTC)
    assert btc["linear"] and btc["swap"] and btc["settle"] == "USDT"
    assert btc["precision"]["amount"] == pytest.approx(0.001)
    assert btc["precision"]["price"] == pytest.approx(0.1)
    assert btc["limits"]["amount"]["min"] == pytest.approx(0.005)
    assert btc["limits"]["cost"]["min"] > 0


def test_a_seeded_random_walk_is_repeatable(sim: Simulator):
    def walk() -> str:
        sim.reset(seed=42)
        result = sim.prices({"symbol": BTC, "walk": {"steps": 50, "volatility": 0.01}})
        return result["prices"]["binance"][BTC]

    first, second = walk(), walk()
    assert first == second
    assert first != "65000.00"


def test_reset_forgets_orders_positions_and_prices(binance: ccxt.Exchange, sim: Simulator):
    binance.create_order(BTC, "market", "buy", 0.01)
    sim.prices({"symbol": BTC, "price": "70000"})
    sim.reset()
    assert sim.ledger() == [] and sim.positions() == []
    assert binance.fetch_ticker(BTC)["last"] == pytest.approx(65000)


def test_the_ledger_records_every_accepted_order(exchange: ccxt.Exchange, sim: Simulator):
    exchange.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "ledger-1"})
    with pytest.raises(ccxt.InvalidOrder):
        exchange.create_order(ETH, "market", "sell", 0.1, None, {"reduceOnly": True})
    (entry,) = sim.ledger()
    assert entry == {
        "exchange": sim_name(exchange),
        "symbol": BTC,
        "clientOrderId": "ledger-1",
        "orderId": entry["orderId"],
        "side": "buy",
        "type": "market",
        "amount": "0.01",
        "filled": "0.01",
        "contractSize": "1",
        "contracts": "0.01",
        "filledContracts": "0.01",
        "price": None,
        "average": "65000",
        "status": "closed",
        "reduceOnly": False,
        "timestamp": entry["timestamp"],
    }


def test_stats_count_exchange_calls_per_operation(binance: ccxt.Exchange, sim: Simulator):
    binance.create_order(BTC, "market", "buy", 0.01)
    binance.fetch_positions([BTC])
    binance.fetch_positions([BTC])
    requests = sim.full_stats()["requests"]["binance"]
    assert requests["create_order"] == 1
    assert requests["positions"] == 2


def test_bybit_realtime_knows_only_the_500_most_recent_finished_orders(
    bybit: ccxt.Exchange, sim: Simulator
):
    # Given an order that filled, followed by 500 more finished orders
    first = bybit.create_order(BTC, "market", "buy", 0.005, None, {"clientOrderId": "old-one"})
    for index in range(500):
        headers = {
            "X-BAPI-API-KEY": "sim-key",
            "X-BAPI-TIMESTAMP": str(time.time_ns() // 1_000_000),
            "X-BAPI-SIGN": "ab" * 32,
        }
        body = {
            "category": "linear",
            "symbol": "BTCUSDT",
            "side": "Sell" if index % 2 == 0 else "Buy",
            "orderType": "Market",
            "qty": "0.005",
        }
        assert (
            sim.raw("POST", "/v5/order/create", json=body, headers=headers).json()["retCode"] == 0
        )
    # Then fetch_order (the realtime endpoint) no longer finds it ...
    with pytest.raises(ccxt.OrderNotFound):
        bybit.fetch_order(first["id"], BTC, {"acknowledged": True})
    # ... while order history still does
    assert bybit.fetch_closed_order(first["id"], BTC)["clientOrderId"] == "old-one"


def test_reset_can_set_prices_and_balances(exchange: ccxt.Exchange, sim: Simulator):
    sim.reset(prices={ETH: "4000"}, balances={sim_name(exchange): "2500"})
    assert exchange.fetch_ticker(ETH)["last"] == pytest.approx(4000)
    assert exchange.fetch_balance()["USDT"]["total"] == pytest.approx(2500)


def test_a_background_walk_moves_the_price_until_reset(binance: ccxt.Exchange, sim: Simulator):
    from tests.conftest import wait_for

    sim.prices(
        {
            "exchange": "binance",
            "symbol": ETH,
            "walk": {"steps": 0, "volatility": 0.01, "interval_ms": 20},
        }
    )
    # The price moves by itself ...
    wait_for(lambda: binance.fetch_ticker(ETH)["last"] != pytest.approx(3500), timeout_s=5)
    # ... and a fixed price stops the walk
    sim.prices({"exchange": "binance", "symbol": ETH, "price": "3000"})
    prices = {sim.prices({"prices": []})["prices"]["binance"][ETH] for _ in range(3)}
    assert prices == {"3000.00"}
