"""Order request validation: every bad input is refused with a message naming the field,
and every accepted amount is one the exchange will take."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.execution.validation import (
    InvalidSignal,
    ValidatedOrder,
    validate_order_request,
)

D = Decimal
# The shape ccxt gives for binanceusdm BTC/USDT:USDT (TICK_SIZE precision mode; floats as ccxt has them)
BTC_MARKET = {
    "symbol": "BTC/USDT:USDT",
    "active": True,
    "precision": {"amount": 0.001, "price": 0.1},
    "limits": {
        "amount": {"min": 0.001, "max": 1000.0},
        "cost": {"min": 100.0, "max": None},
        "price": {"min": 556.8, "max": 4529764.0},
    },
}
MARKETS = {"BTC/USDT:USDT": BTC_MARKET}


def request(**overrides):
    fields = {
        "signal_id": "sig-1",
        "account": "binance",
        "known_accounts": {"binance", "bybit"},
        "symbol": "BTC/USDT:USDT",
        "side": "buy",
        "amount": "0.01",
        "price": None,
        "order_type": "market",
        "time_in_force": None,
        "reduce_only": False,
        "metadata": None,
        "max_signal_id_length": 64,
        "max_metadata_bytes": 256,
        "reference_price": D("50000"),
    }
    fields.update(overrides)
    fields.setdefault("market", MARKETS.get(fields["symbol"]))
    return validate_order_request(**fields)


def refused(**overrides) -> InvalidSignal:
    with pytest.raises(InvalidSignal) as caught:
        request(**overrides)
    return caught.value


def test_a_good_market_order_passes_with_decimal_amounts():
    order = request()
    assert order == ValidatedOrder(
        signal_id="sig-1",
        account="binance",
        symbol="BTC/USDT:USDT",
        side="buy",
        order_type="market",
        amount=D("0.01"),
        price=None,
        time_in_force=None,
        reduce_only=False,
        metadata={},
        requested_amount=D("0.01"),
    )


def test_the_amount_is_rounded_down_to_the_step():
    assert request(amount="0.0129").amount == D("0.012")


def test_a_good_limit_order_defaults_to_gtc_and_rounds_the_price_in_the_buyers_favour():
    order = request(order_type="limit", price="50000.07", reference_price=None)
    assert order.price == D("50000.0") and order.time_in_force == "GTC"
    sell = request(order_type="limit", side="sell", price="50000.01", time_in_force="ioc")
    assert sell.price == D("50000.1") and sell.time_in_force == "IOC"


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"account": "kraken"}, "exchange", "unknown account"),
        ({"symbol": "DOGE/USDT:USDT"}, "symbol", "unknown symbol"),
        ({"market": {**BTC_MARKET, "active": False}}, "symbol", "not active"),
        ({"side": "long"}, "side", "'buy' or 'sell'"),
        ({"side": "BUY"}, "side", "'buy' or 'sell'"),
        ({"order_type": "stop"}, "order_type", "'market' or 'limit'"),
        ({"amount": "NaN"}, "amount", "finite"),
        ({"amount": "inf"}, "amount", "finite"),
        ({"amount": "-Infinity"}, "amount", "finite"),
        ({"amount": "-1"}, "amount", "positive"),
        ({"amount": "0"}, "amount", "positive"),
        ({"amount": "0e5"}, "amount", "positive"),
        ({"amount": "abc"}, "amount", "not a decimal"),
        ({"amount": "1_000"}, "amount", "not a decimal"),
        ({"amount": "0x10"}, "amount", "not a decimal"),
        (
            {"amount": "\u0663"},
            "amount",
            "not a decimal",
        ),  # Arabic-Indic 3: Decimal() would take it
        ({"amount": ""}, "amount", "not a decimal"),
        ({"amount": 0.01}, "amount", "decimal string"),
        ({"amount": True}, "amount", "decimal string"),
        ({"amount": None}, "amount", "decimal string"),
        ({"amount": "1e-40"}, "amount", "out of range"),
        ({"amount": "1" * 70}, "amount", "too long"),
        ({"amount": "0.0009"}, "amount", "rounds to 0"),
        ({"amount": "2000"}, "amount", "above the market's maximum"),
        ({"amount": "0.001"}, "amount", "below the market's minimum 100"),
        ({"order_type": "limit", "price": None}, "price", "required"),
        ({"order_type": "limit", "price": "-5"}, "price", "positive"),
        ({"order_type": "limit", "price": "0.01"}, "price", "rounds to 0"),
        ({"order_type": "limit", "price": "nan"}, "price", "finite"),
        ({"price": "50000"}, "price", "only for limit orders"),
        (
            {"order_type": "limit", "price": "50000", "time_in_force": "FOK"},
            "time_in_force",
            "GTC or IOC",
        ),
        ({"time_in_force": "GTC"}, "time_in_force", "only for limit orders"),
        ({"reduce_only": "yes"}, "reduce_only", "true or false"),
        ({"signal_id": ""}, "signal_id", "non-empty"),
        ({"signal_id": "   "}, "signal_id", "non-empty"),
        ({"signal_id": 42}, "signal_id", "non-empty"),
        ({"signal_id": "x" * 65}, "signal_id", "maximum 64"),
        ({"signal_id": "line\nbreak"}, "signal_id", "non-printable"),
        ({"metadata": ["a"]}, "metadata", "JSON object"),
        ({"metadata": {"when": object()}}, "metadata", "JSON-serialisable"),
        ({"metadata": {"x": float("nan")}}, "metadata", "JSON-serialisable"),
        ({"metadata": {1: "a"}}, "metadata", "keys must be strings"),
        ({"metadata": {"note": "é" * 200}}, "metadata", "maximum 256"),
    ],
)
def test_bad_input_is_refused_with_a_message_naming_the_field(overrides, field, says):
    error = refused(**overrides)
    assert error.field == field
    assert says in error.message
    assert str(error).startswith(f"{field}: ")
    assert "\n" not in str(error)


def test_min_notional_uses_the_limit_price():
    error = refused(order_type="limit", price="1000", amount="0.05", reference_price=None)
    assert "notional" in error.message


def test_min_notional_is_skipped_without_any_price():
    assert request(amount="0.001", reference_price=None).amount == D("0.001")


def test_reduce_only_orders_are_exempt_from_min_notional():
    # A small remainder of a position must always be closable
    assert request(amount="0.001", reduce_only=True, side="sell").amount == D("0.001")


def test_exponent_notation_is_fine_when_finite():
    assert request(amount="1.5e-2").amount == D("0.015")


def test_decimal_and_int_amounts_are_accepted():
    assert request(amount=D("0.02")).amount == D("0.02")
    assert request(amount=1).amount == D("1")


def test_metadata_is_stored_as_its_json_round_trip():
    original = {"strategy": "s1", "levels": (1, 2)}
    order = request(metadata=original)
    assert order.metadata == {"strategy": "s1", "levels": [1, 2]}
    assert order.metadata is not original


def test_a_market_without_limits_still_validates_the_basics():
    bare = {"symbol": "X/USDT:USDT", "precision": {"amount": None}, "limits": {}}
    assert request(symbol="X/USDT:USDT", market=bare, amount="3.14159").amount == D("3.14159")


steps = st.sampled_from(["1", "0.1", "0.01", "0.001", "0.5", "5"])


@given(
    amount=st.decimals(min_value=D("0.0001"), max_value=D("100000"), places=6),
    step=steps,
    min_steps=st.integers(min_value=1, max_value=20),
)
def test_every_accepted_amount_is_on_the_grid_at_or_above_the_minimum_and_not_above_the_input(
    amount, step, min_steps
):
    market = {
        "symbol": "X/USDT:USDT",
        "precision": {"amount": float(step), "price": 0.01},
        "limits": {"amount": {"min": float(D(step) * min_steps)}, "cost": {"min": 5.0}},
    }
    try:
        order = request(symbol="X/USDT:USDT", market=market, amount=str(amount))
    except InvalidSignal as error:
        assert error.field == "amount"
        return
    assert order.amount % D(step) == 0
    assert order.amount >= D(step) * min_steps
    assert amount - D(step) < order.amount <= amount
    assert order.amount * D("50000") >= 5


@given(text=st.text(max_size=30))
def test_any_amount_text_is_either_accepted_as_positive_or_refused_cleanly(text):
    try:
        order = request(amount=text)
    except InvalidSignal as error:
        assert error.field == "amount"
    else:
        assert order.amount > 0 and order.amount.is_finite()
