"""The signal contract's static half: every argument checked without a service, every
refusal one short line naming the field, the result in one format."""

from __future__ import annotations

import json
import string
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.execution.client_ids import client_order_id
from workers.execution.signal import (
    MAX_REASON_CHARS,
    ORDER_TERMS,
    LimitOrderArguments,
    MarketOrderArguments,
    OrderResult,
    SignalLimits,
    SignalRejected,
    arguments_for_task,
    arguments_table,
    conflict,
    escape_text,
    message_terms,
    one_line,
    order_result,
    parse_arguments,
    parse_decimal,
    plain_decimal,
    rejection_from_errors,
    result_table,
)

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
LIMITS = SignalLimits(
    max_signal_id_length=64, max_metadata_bytes=256, accounts=frozenset({"binance", "bybit"})
)
GOOD = {
    "signal_id": "bot7-2026-11-21T18:00:00Z-eth",
    "exchange": "binance",
    "symbol": "ETH/USDT:USDT",
    "side": "buy",
    "amount": "0.3",
}
FIELDS = set(LimitOrderArguments.model_fields) | {"arguments"}


def refusal(payload: object, model=MarketOrderArguments, limits=LIMITS) -> SignalRejected:
    with pytest.raises(SignalRejected) as caught:
        parse_arguments(payload, model, limits)
    return caught.value


def assert_one_safe_line(reason: str) -> None:
    assert len(reason) <= MAX_REASON_CHARS
    assert reason.isprintable(), repr(reason)
    reason.encode("utf-8")  # no lone surrogate: it can be stored and logged


def test_a_good_market_order_parses_to_decimals_and_its_client_order_id():
    # When a producer's arguments are parsed
    arguments = parse_arguments({**GOOD, "amount": "0.30"}, MarketOrderArguments, LIMITS)

    # Then the amount is a Decimal, the defaults are filled in, and the order has its id
    assert arguments.amount == D("0.3")
    assert (arguments.reduce_only, arguments.purpose, arguments.leg) == (False, "open", None)
    assert arguments.client_order_id == client_order_id(GOOD["signal_id"], "open")
    # and its task arguments are the same order in one text form
    assert arguments.task_kwargs() == {**GOOD, "reduce_only": False, "purpose": "open"}


def test_a_limit_order_defaults_to_gtc_and_either_order_is_told_apart_by_its_price():
    limit = parse_arguments({**GOOD, "price": "3400.50"}, None, LIMITS)
    market = parse_arguments(GOOD, None, LIMITS)

    assert isinstance(limit, LimitOrderArguments) and limit.time_in_force == "GTC"
    assert limit.price == D("3400.5")
    assert isinstance(market, MarketOrderArguments) and market.price is None


# The inputs that failed without a clean refusal, and their neighbours.
BAD_ARGUMENTS = [
    ({"signal_id": "sig\x00nul"}, "signal_id", "non-printable"),
    ({"signal_id": "line\nbreak"}, "signal_id", "non-printable"),
    ({"signal_id": "x" * 300}, "signal_id", "maximum 64"),
    ({"signal_id": ""}, "signal_id", "empty"),
    ({"signal_id": "   "}, "signal_id", "empty"),
    ({"signal_id": 42}, "signal_id", "must be a string"),
    ({"exchange": "bin\x00ance"}, "exchange", "unknown account"),
    ({"exchange": "binance\n"}, "exchange", "unknown account"),
    ({"exchange": "kraken"}, "exchange", "unknown account"),
    ({"symbol": "ETH/USDT:USDT\x00"}, "symbol", "non-printable"),
    ({"symbol": "ETH/USDT:USDT\nforged line"}, "symbol", "non-printable"),
    ({"symbol": "ETH" * 3334}, "symbol", "maximum 64"),
    ({"symbol": "ETH/USDT"}, "symbol", "use 'ETH/USDT:USDT'"),
    ({"symbol": "BTC/USDT"}, "symbol", "use 'BTC/USDT:USDT'"),
    ({"symbol": "ETHUSDT"}, "symbol", "use 'ETH/USDT:USDT'"),
    ({"symbol": "BTC/USD:BTC"}, "symbol", "not a linear perpetual"),
    ({"symbol": "BTC/USDT:USDT-250328"}, "symbol", "not a linear perpetual"),
    ({"symbol": "NOPE"}, "symbol", "unified perpetual symbol"),
    ({"side": "s" * 1_000_000}, "side", "'buy' or 'sell'"),
    ({"side": "BUY"}, "side", "'buy' or 'sell'"),
    ({"amount": "abc"}, "amount", "not a decimal"),
    ({"amount": "1_000"}, "amount", "not a decimal"),
    ({"amount": "\u0663"}, "amount", "not a decimal"),  # Decimal() would take an Arabic-Indic 3
    ({"amount": "0.3\n"}, "amount", "not a decimal"),
    ({"amount": "NaN"}, "amount", "finite"),
    ({"amount": "-Infinity"}, "amount", "finite"),
    ({"amount": "-1"}, "amount", "positive"),
    ({"amount": "0e5"}, "amount", "positive"),
    ({"amount": 0.3}, "amount", "decimal string"),
    ({"amount": True}, "amount", "decimal string"),
    ({"amount": None}, "amount", "decimal string"),
    ({"amount": "1e19"}, "amount", "out of range"),
    ({"amount": 10**25}, "amount", "out of range"),
    ({"amount": "1e-40"}, "amount", "out of range"),
    ({"amount": "1" * 70}, "amount", "too long"),
    ({"price": "3400"}, "price", "only for limit orders"),
    ({"time_in_force": "GTC"}, "time_in_force", "only for limit orders"),
    ({"reduce_only": "yes"}, "reduce_only", "true or false"),
    ({"reduce_only": 1}, "reduce_only", "true or false"),
    ({"purpose": "open\n"}, "purpose", "lowercase word"),
    ({"purpose": "Open"}, "purpose", "lowercase word"),
    ({"purpose": "__"}, "purpose", "lowercase word"),
    ({"leg": ""}, "leg", "1-12 lowercase"),
    ({"leg": "open\n"}, "leg", "1-12 lowercase"),
    ({"leg": "a-b"}, "leg", "1-12 lowercase"),
    ({"position_id": 0}, "position_id", "from 1 to 2^63-1"),
    ({"position_id": -5}, "position_id", "from 1 to 2^63-1"),
    ({"position_id": 2**63}, "position_id", "from 1 to 2^63-1"),
    ({"position_id": "12"}, "position_id", "integer id"),
    ({"aged_id": 2**64}, "aged_id", "from 1 to 2^63-1"),
    ({"aged_id": True}, "aged_id", "integer id"),
    ({"metadata": {"note": "a\x00b"}}, "metadata", "NUL"),
    ({"metadata": {"a\x00": 1}}, "metadata", "NUL"),
    ({"metadata": {"deep": [{"x": "\x00"}]}}, "metadata", "NUL"),
    ({"metadata": {"x": "\ud800"}}, "metadata", "not valid Unicode"),
    ({"metadata": ["a"]}, "metadata", "JSON object"),
    ({"metadata": {"x": float("nan")}}, "metadata", "JSON-serialisable"),
    ({"metadata": {1: "a"}}, "metadata", "keys must be strings"),
    ({"metadata": {"blob": "é" * 200}}, "metadata", "maximum 256"),
    ({"unknown": 1}, "unknown", "not an argument"),
    ({"order_type": "limit"}, "order_type", "not an argument"),
]


@pytest.mark.parametrize(("override", "field", "says"), BAD_ARGUMENTS)
def test_each_bad_argument_is_refused_with_one_short_line_naming_it(override, field, says):
    error = refusal({**GOOD, **override})

    assert error.field == field
    assert str(error) == error.reason and error.reason.startswith(f"{field}: ")
    assert says in error.reason
    assert_one_safe_line(error.reason)


@pytest.mark.parametrize("missing", ["signal_id", "exchange", "symbol", "side", "amount"])
def test_a_missing_argument_is_named(missing):
    payload = {name: value for name, value in GOOD.items() if name != missing}
    assert refusal(payload).reason == f"{missing}: is required"


def test_a_limit_order_needs_its_price_and_takes_gtc_or_ioc_only():
    assert refusal(GOOD, LimitOrderArguments).reason == "price: is required"
    bad_tif = refusal({**GOOD, "price": "1", "time_in_force": "gtc"}, LimitOrderArguments)
    assert bad_tif.field == "time_in_force" and "'GTC' or 'IOC'" in bad_tif.reason


def test_not_an_object_and_positional_arguments_are_refused():
    assert refusal(["sig", "binance"]).field == "arguments"
    with pytest.raises(SignalRejected) as caught:
        arguments_for_task("execute_market_order", ("sig",), GOOD, LIMITS)
    assert caught.value.field == "arguments" and "by name" in caught.value.reason


def test_several_problems_name_the_first_and_count_the_rest():
    error = refusal({**GOOD, "side": "x", "amount": "abc", "extra": 1})
    assert error.reason.startswith("side: ") and error.reason.endswith("(and 2 more problems)")


def test_the_settings_limits_apply_and_default_without_them():
    # Given a deployment that allows 128-character signal ids and one account
    limits = SignalLimits(max_signal_id_length=128, accounts=frozenset({"main"}))
    long_id = {**GOOD, "exchange": "main", "signal_id": "s" * 100}

    # Then its limits decide, and without limits any well-formed account passes
    assert parse_arguments(long_id, MarketOrderArguments, limits).signal_id == "s" * 100
    assert refusal(long_id).field == "signal_id"
    assert parse_arguments({**GOOD, "exchange": "anyname"}, MarketOrderArguments).exchange == (
        "anyname"
    )


def test_a_web_frameworks_errors_give_the_same_line():
    # FastAPI reports a body's errors with "body" (and a union's tag) before the field
    errors = [
        {"type": "missing", "loc": ("body", "limit", "price"), "msg": "Field required"},
    ]
    assert rejection_from_errors(errors).reason == "price: is required"


def test_the_json_schema_describes_every_argument_for_a_request_body():
    schema = LimitOrderArguments.model_json_schema()
    assert set(schema["properties"]) == set(LimitOrderArguments.model_fields)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"signal_id", "exchange", "symbol", "side", "amount", "price"}


# --- idempotency terms --------------------------------------------------------------------


def test_the_same_order_in_other_words_is_no_conflict():
    first = message_terms("execute_market_order", {**GOOD, "amount": "0.30"})
    again = message_terms(
        "execute_market_order", {**GOOD, "metadata": {"enqueued_at_ms": 1}, "position_id": 7}
    )
    assert conflict(GOOD["signal_id"], "open", first, again) is None


def test_another_order_under_the_key_is_a_conflict_naming_what_differs():
    first = message_terms("execute_market_order", GOOD)
    other = message_terms(
        "execute_market_order", {**GOOD, "symbol": "BTC/USDT:USDT", "side": "sell", "amount": "0.5"}
    )

    refused = conflict(GOOD["signal_id"], "open", first, other)

    assert refused is not None and refused.event_type == "signal_conflict"
    assert refused.fields == ["symbol", "side", "amount"]
    assert "symbol 'ETH/USDT:USDT'->'BTC/USDT:USDT'" in refused.reason
    assert_one_safe_line(refused.reason)


def test_a_market_and_a_limit_order_under_one_key_conflict():
    market = message_terms("execute_market_order", GOOD)
    limit = message_terms("execute_limit_order", {**GOOD, "price": "3400"})
    refused = conflict("s", "open", market, limit)
    assert refused is not None and refused.fields == ["order_type", "price", "time_in_force"]


# --- the result ---------------------------------------------------------------------------


def result(**overrides):
    fields = {
        "exchange_order_id": "8390343549",
        "client_order_id": "xqopen-abc",
        "status": "filled",
        "requested": D("0.123456789012345678901234567890"),
        "amount": D("0.123000000000000000"),
        "filled": D("0.123000000000000000"),
        "average_price": D("3500.000000000000000000"),
        "attempts": 2,
        "last_error": "RequestTimeout: read timed out",
        "last_error_class": "ambiguous",
    }
    return order_result(**(fields | overrides))


def test_the_result_has_plain_decimals_and_says_what_was_asked_and_placed():
    assert result() == {
        "order_id": "8390343549",
        "client_order_id": "xqopen-abc",
        "status": "filled",
        "requested": "0.12345678901234567890123456789",
        "amount": "0.123",
        "filled": "0.123",
        "average_price": "3500",
        "attempts": 2,
        "error": None,
        "error_class": None,
    }
    assert set(result()) == set(OrderResult.model_fields)


def test_zero_is_zero_and_an_error_shows_only_when_the_order_did_not_fill():
    rejected = result(status="rejected", filled=D("0E-18"), average_price=None, requested=None)
    assert rejected["filled"] == "0" and rejected["requested"] == "0.123"
    assert (rejected["error"], rejected["error_class"]) == (
        "RequestTimeout: read timed out",
        "ambiguous",
    )
    assert result(status="open")["error"] is None


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**18), max_value=10**18))
def test_plain_decimal_is_one_exact_text_form(value):
    text = plain_decimal(value)
    assert Decimal(text) == value
    assert "E" not in text and "e" not in text and text != "-0"
    assert "." not in text or not text.endswith(("0", "."))


# --- properties of the refusals -----------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
nasty_text = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()) | st.sampled_from("\x00\n\r\u2028"),
    max_size=300,
)


@given(
    overrides=st.dictionaries(
        st.sampled_from(sorted(FIELDS - {"arguments"}) + ["other"]),
        json_values | nasty_text,
        max_size=4,
    ),
    limit=st.booleans(),
)
def test_any_arguments_either_parse_or_are_refused_in_one_line(overrides, limit):
    model = LimitOrderArguments if limit else MarketOrderArguments
    try:
        parsed = parse_arguments({**GOOD, **overrides}, model, LIMITS)
    except SignalRejected as error:
        assert error.field in FIELDS | {"other"}
        assert_one_safe_line(error.reason)
    else:
        assert 0 < parsed.amount < 10**18
        assert parsed.signal_id.isprintable() and parsed.symbol.isprintable()
        json.dumps(parsed.task_kwargs())


@given(nasty_text, st.integers(min_value=2, max_value=300))
def test_one_line_is_printable_and_short_whatever_the_text(text, limit):
    line = one_line(text, limit)
    assert len(line) <= limit and line.isprintable()
    line.encode("utf-8")
    assert escape_text(text) == text or not text.isprintable()


@given(st.text(alphabet=string.digits + ".eE+-_ nNaIiFf\n", max_size=40))
def test_any_amount_text_is_a_positive_column_value_or_refused(text):
    try:
        number = parse_decimal(text)
    except ValueError as error:
        assert_one_safe_line(str(error))
    else:
        assert number.is_finite() and abs(number) < 10**18


@given(
    first=st.fixed_dictionaries({name: st.sampled_from(["a", "b", None]) for name in ORDER_TERMS}),
    second=st.fixed_dictionaries({name: st.sampled_from(["a", "b", None]) for name in ORDER_TERMS}),
)
def test_a_conflict_names_exactly_the_terms_that_differ(first, second):
    refused = conflict("sig", "open", first, second)
    differing = [name for name in ORDER_TERMS if first[name] != second[name]]
    if not differing:
        assert refused is None
    else:
        assert refused is not None and refused.fields == differing
        assert_one_safe_line(refused.reason)


# --- the documentation is the schema ------------------------------------------------------


def test_the_readme_tables_are_the_schemas():
    readme = (ROOT / "README.md").read_text()
    assert arguments_table() in readme
    assert result_table() in readme
