"""The market checks of a signal: one symbol per market, and every accepted amount and
price one the exchange will take."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.execution.signal import (
    LimitOrderArguments,
    MarketOrderArguments,
    SignalRejected,
    parse_arguments,
)
from workers.execution.validation import (
    MarketRules,
    ValidatedOrder,
    check_against_market,
    check_notional,
    market_rules,
    perpetual_for,
)

D = Decimal


def perpetual(base: str, **limits) -> dict:
    """A linear perpetual as ccxt's binanceusdm gives it (TICK_SIZE mode; floats as ccxt has them)."""
    return {
        "id": f"{base}USDT",
        "symbol": f"{base}/USDT:USDT",
        "base": base,
        "quote": "USDT",
        "settle": "USDT",
        "type": "swap",
        "swap": True,
        "linear": True,
        "active": True,
        "precision": {"amount": 0.001, "price": 0.01},
        "limits": {
            "amount": {"min": 0.001, "max": 10000.0},
            "market": {"min": 0.001, "max": 2000.0},
            "price": {"min": 0.01, "max": 4529764.0},
            "cost": {"min": 20.0, "max": None},
        }
        | limits,
    }


ETH = perpetual("ETH")
BTC = perpetual("BTC", amount={"min": 0.005, "max": 1000.0}, cost={"min": 100.0})
ETH_SPOT = {"id": "ETHUSDT", "symbol": "ETH/USDT", "spot": True, "swap": False, "linear": None}
MARKETS = {"ETH/USDT:USDT": ETH, "BTC/USDT:USDT": BTC}


def market_order(**overrides) -> MarketOrderArguments:
    return parse_arguments(
        {
            "signal_id": "s1",
            "exchange": "binance",
            "symbol": "ETH/USDT:USDT",
            "side": "buy",
            "amount": "0.3",
        }
        | overrides,
        MarketOrderArguments,
    )


def limit_order(**overrides) -> LimitOrderArguments:
    return parse_arguments(
        {
            "signal_id": "s1",
            "exchange": "binance",
            "symbol": "ETH/USDT:USDT",
            "side": "buy",
            "amount": "0.3",
            "price": "3400",
        }
        | overrides,
        LimitOrderArguments,
    )


def refused(arguments, market=ETH) -> SignalRejected:
    with pytest.raises(SignalRejected) as caught:
        check_against_market(arguments, market_rules(market))
    return caught.value


# --- one symbol ---------------------------------------------------------------------------


def test_the_exact_unified_symbol_of_a_linear_perpetual_is_its_market():
    assert perpetual_for("ETH/USDT:USDT", MARKETS, account="binance") is ETH


@pytest.mark.parametrize(
    ("symbol", "resolved"),
    [
        ("ETH/USDT", "ETH/USDT:USDT"),  # what ccxt's market() makes of it on binanceusdm
        ("ETH/USDT", None),  # and when ccxt has no answer (Bybit): the spot-style form
        ("ETHUSDT", None),  # the exchange's id
        ("eth/usdt:usdt", None),  # another case
    ],
)
def test_an_alias_is_refused_naming_the_symbol_to_use(symbol, resolved):
    with pytest.raises(SignalRejected) as caught:
        perpetual_for(symbol, MARKETS, account="binance", resolved=resolved)
    assert caught.value.reason == (
        f"symbol: '{symbol}' is an alias on binance; use 'ETH/USDT:USDT'"
    )


def test_a_market_that_is_not_a_linear_perpetual_and_an_unknown_one_are_refused():
    markets = MARKETS | {"ETH/USDT": ETH_SPOT, "DOGE/USDT": {**ETH_SPOT, "id": "DOGEUSDT"}}
    with pytest.raises(SignalRejected, match="not a linear perpetual"):
        perpetual_for("DOGE/USDT", markets, account="binance")
    with pytest.raises(SignalRejected, match="unknown symbol 'XRP/USDT:USDT' on binance"):
        perpetual_for("XRP/USDT:USDT", markets, account="binance")


# --- amounts and prices -------------------------------------------------------------------


def test_a_good_market_order_keeps_what_was_asked_beside_what_is_placed():
    order = check_against_market(market_order(amount="0.1234567"), market_rules(ETH))
    assert order == ValidatedOrder(
        signal_id="s1",
        account="binance",
        symbol="ETH/USDT:USDT",
        side="buy",
        order_type="market",
        amount=D("0.123"),
        price=None,
        time_in_force=None,
        reduce_only=False,
        metadata={},
        requested_amount=D("0.1234567"),
    )


def test_a_limit_price_is_rounded_in_the_traders_favour():
    rules = market_rules(BTC | {"precision": {"amount": 0.001, "price": 0.1}})
    buy = check_against_market(limit_order(symbol="BTC/USDT:USDT", price="50000.07"), rules)
    sell = check_against_market(
        limit_order(symbol="BTC/USDT:USDT", price="50000.01", side="sell", time_in_force="IOC"),
        rules,
    )
    assert (buy.price, buy.time_in_force) == (D("50000.0"), "GTC")
    assert (sell.price, sell.time_in_force) == (D("50000.1"), "IOC")


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (market_order(amount="0.0009"), "amount: 0.0009 rounds to 0 at the market's step 0.001"),
        (market_order(amount="2500"), "amount: 2500 is above the market-order maximum 2000"),
        (market_order(amount="20000"), "amount: 20000 is above the market-order maximum 2000"),
        (limit_order(amount="20000"), "amount: 20000 is above the market's maximum 10000"),
        (limit_order(price="1e7"), "price: 10000000 is above the market's maximum price 4529764"),
        (limit_order(price="0.001"), "price: 0.001 rounds to 0 at the market's tick 0.01"),
    ],
)
def test_amounts_and_prices_off_the_markets_limits_are_refused(arguments, says):
    assert refused(arguments).reason.startswith(says)


def test_a_market_order_over_its_maximum_says_a_limit_order_takes_more():
    assert refused(market_order(amount="2500")).reason.endswith("(a limit order takes up to 10000)")
    assert check_against_market(limit_order(amount="2500"), market_rules(ETH)).amount == 2500


def test_an_amount_under_the_markets_minimum_is_refused():
    error = refused(market_order(symbol="BTC/USDT:USDT", amount="0.003"), BTC)
    assert error.reason == "amount: 0.003 is below the market's minimum 0.005"


def test_an_inactive_market_is_refused():
    assert "not active" in refused(market_order(), ETH | {"active": False}).reason


def test_bybits_market_order_maximum_comes_from_its_instrument_info():
    # ccxt's bybit leaves maxMktOrderQty in the raw info; the edge passes it in
    bybit = {key: value for key, value in ETH.items()}
    bybit["limits"] = {k: v for k, v in ETH["limits"].items() if k != "market"}
    rules = market_rules(bybit, market_amount_max=D("724"))
    with pytest.raises(SignalRejected, match="above the market-order maximum 724"):
        check_against_market(market_order(amount="800"), rules)


def test_min_notional_uses_the_limit_price_or_the_reference_price():
    rules = market_rules(BTC)
    limit = check_against_market(
        limit_order(symbol="BTC/USDT:USDT", price="1000", amount="0.05"), rules
    )
    with pytest.raises(SignalRejected, match="50 in notional, below the market's minimum 100"):
        check_notional(limit, rules)
    market = check_against_market(market_order(symbol="BTC/USDT:USDT", amount="0.005"), rules)
    check_notional(market, rules, reference_price=None)  # no price known: the exchange decides
    with pytest.raises(SignalRejected, match="notional"):
        check_notional(market, rules, reference_price=D("10000"))


def test_reduce_only_orders_are_exempt_from_min_notional():
    # A small remainder of a position must always be closable
    rules = market_rules(BTC)
    order = check_against_market(
        market_order(symbol="BTC/USDT:USDT", amount="0.005", reduce_only=True, side="sell"), rules
    )
    check_notional(order, rules, reference_price=D("1"))


def test_a_market_without_limits_still_checks_the_basics():
    bare = market_rules({"symbol": "X/USDT:USDT", "precision": {"amount": None}, "limits": {}})
    assert bare == MarketRules(symbol="X/USDT:USDT")
    assert check_against_market(market_order(amount="3.14159"), bare).amount == D("3.14159")


steps = st.sampled_from(["1", "0.1", "0.01", "0.001", "0.5", "5"])


@given(
    amount=st.decimals(min_value=D("0.0001"), max_value=D("100000"), places=6),
    step=steps,
    min_steps=st.integers(min_value=1, max_value=20),
    market_max=st.sampled_from([None, "50", "5000"]),
)
def test_every_accepted_amount_is_on_the_grid_within_the_limits_and_not_above_the_input(
    amount, step, min_steps, market_max
):
    rules = MarketRules(
        symbol="X/USDT:USDT",
        amount_step=D(step),
        amount_min=D(step) * min_steps,
        amount_max=D("10000"),
        market_amount_max=None if market_max is None else D(market_max),
    )
    try:
        order = check_against_market(market_order(amount=str(amount)), rules)
    except SignalRejected as error:
        assert error.field == "amount"
        return
    assert order.amount % D(step) == 0
    assert order.amount >= D(step) * min_steps
    assert amount - D(step) < order.amount <= amount
    assert market_max is None or order.amount <= D(market_max)
    assert order.requested_amount == amount


@given(
    price=st.decimals(min_value=D("0.0001"), max_value=D("10") ** 17, places=4),
    side=st.sampled_from(["buy", "sell"]),
    tick=st.sampled_from(["0.01", "0.1", "0.5", "10"]),
)
def test_every_accepted_price_is_on_the_tick_within_the_limits_and_no_worse_than_asked(
    price, side, tick
):
    rules = MarketRules(
        symbol="X/USDT:USDT", price_tick=D(tick), price_min=D("0.01"), price_max=D("4529764")
    )
    try:
        order = check_against_market(limit_order(price=str(price), side=side), rules)
    except SignalRejected as error:
        assert error.field == "price"
        return
    assert order.price % D(tick) == 0
    assert D("0.01") <= order.price <= D("4529764")
    assert order.price <= price if side == "buy" else order.price >= price
