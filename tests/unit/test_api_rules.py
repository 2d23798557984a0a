"""The HTTP API's pure rules: TradingView's ticker rule and signal id, alert staleness,
Standard Webhooks signatures, the key ring's look-ups."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.api import signatures
from workers.api.auth import ApiKey, KeyRing, key_digest
from workers.api.tradingview import (
    StaleAlert,
    alert_order,
    alert_signal_id,
    alert_time,
    check_fresh,
    parse_alert,
    ticker_symbol,
)
from workers.execution.signal import SignalRejected, parse_arguments

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


@pytest.mark.parametrize(
    ("ticker", "symbol"),
    [
        ("BINANCE:ETHUSDT.P", "ETH/USDT:USDT"),
        ("ETHUSDT.P", "ETH/USDT:USDT"),
        ("BYBIT:BTCUSDT.P", "BTC/USDT:USDT"),
        ("btcusdc.p", "BTC/USDC:USDC"),
        ("BINANCE:SOLUSDT", "SOL/USDT:USDT"),
        ("1000PEPEUSDT.P", "1000PEPE/USDT:USDT"),
    ],
)
def test_the_ticker_rule_names_the_linear_perpetual(ticker, symbol):
    assert ticker_symbol(ticker, {}) == symbol


@pytest.mark.parametrize("ticker", ["BINANCE:BTCEUR", "SPX", "ETH/USDT.P", "", "USDT.P"])
def test_a_ticker_the_rule_cannot_read_is_refused_naming_the_map(ticker):
    with pytest.raises(SignalRejected) as refused:
        ticker_symbol(ticker, {})
    assert refused.value.field == "ticker"
    assert "symbols" in refused.value.reason


def test_the_keys_symbol_map_comes_before_the_rule():
    symbols = {"BINANCE:ETHUSDT.P": "ETH/USDC:USDC", "XBTUSD": "BTC/USDT:USDT"}
    assert ticker_symbol("BINANCE:ETHUSDT.P", symbols) == "ETH/USDC:USDC"
    assert ticker_symbol("BITMEX:XBTUSD", symbols) == "BTC/USDT:USDT"


@given(st.text(min_size=1, max_size=128), st.integers(0, 4_000_000_000))
def test_an_alerts_signal_id_is_the_same_for_a_retry_and_always_a_valid_signal_id(order_id, ts):
    fired_at = datetime.fromtimestamp(ts, UTC)
    signal_id = alert_signal_id("tv", order_id, fired_at, 64)
    assert signal_id == alert_signal_id("tv", order_id, fired_at, 64)
    assert len(signal_id) <= 64 and signal_id.isprintable()
    assert signal_id != alert_signal_id("tv", order_id, fired_at + timedelta(seconds=1), 64)
    assert signal_id != alert_signal_id("other", order_id, fired_at, 64)


def test_a_readable_order_id_stays_readable_in_the_signal_id():
    assert alert_signal_id("tv", "Long", NOW, 64) == "tv-tv-Long-20260101T120000Z"


@pytest.mark.parametrize(
    "value",
    ["2026-01-01T12:00:00Z", "2026-01-01T13:00:00+01:00", 1767268800, 1767268800000, "1767268800"],
)
def test_an_alerts_time_is_read_from_iso_8601_or_unix_seconds_or_milliseconds(value):
    assert alert_time(value) == NOW


@pytest.mark.parametrize("value", ["2026-01-01T12:00:00", "noon", Decimal("NaN"), 10**30])
def test_an_unreadable_or_zoneless_time_is_refused(value):
    with pytest.raises(SignalRejected) as refused:
        alert_time(value)
    assert refused.value.field == "timestamp"


def test_an_alert_older_or_further_ahead_than_the_lag_is_stale():
    check_fresh(NOW - timedelta(seconds=300), NOW, 300)
    check_fresh(NOW + timedelta(seconds=300), NOW, 300)
    for fired_at in (NOW - timedelta(seconds=301), NOW + timedelta(seconds=301)):
        with pytest.raises(StaleAlert):
            check_fresh(fired_at, NOW, 300)


def alert(**changes):
    body = {
        "exchange": "binance",
        "ticker": "BINANCE:ETHUSDT.P",
        "action": "BUY",
        "contracts": Decimal("0.30"),
        "order_id": "Long",
        "timestamp": "2026-01-01T12:00:00Z",
    }
    return parse_alert({**body, **changes})


def order_of(parsed, **options):
    return alert_order(
        parsed,
        key_name="tv",
        symbols={},
        now=NOW,
        max_lag_s=options.get("max_lag_s", 300),
        max_signal_id_length=64,
    )


def test_an_alert_becomes_the_order_schemas_arguments():
    task, kwargs = order_of(alert())
    assert task == "execute_market_order"
    arguments = parse_arguments(kwargs)
    assert (arguments.symbol, arguments.side, arguments.amount) == (
        "ETH/USDT:USDT",
        "buy",
        Decimal("0.3"),
    )
    assert arguments.signal_id == "tv-tv-Long-20260101T120000Z"


def test_an_alert_with_a_price_is_a_limit_order():
    task, kwargs = order_of(alert(price="3400", reduce_only=True, purpose="close"))
    assert task == "execute_limit_order"
    arguments = parse_arguments(kwargs)
    assert (arguments.price, arguments.time_in_force, arguments.reduce_only) == (
        Decimal("3400"),
        "GTC",
        True,
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"contracts": True}, "contracts"), ({"extra": 1}, "extra"), ({"ticker": 5}, "ticker")],
)
def test_a_malformed_alert_is_refused_naming_its_field(changes, field):
    with pytest.raises(SignalRejected) as refused:
        alert(**changes)
    assert refused.value.field == field


# --- Standard Webhooks ------------------------------------------------------------------------


def test_a_signature_made_with_the_secret_verifies_and_names_its_key():
    body = b'{"a": 1}'
    headers = signatures.signed_headers(SECRET, "msg_1", int(NOW.timestamp()), body)
    secrets = [("other", b"x" * 32), ("bot", signatures.secret_bytes(SECRET))]
    assert (
        signatures.verify(secrets, headers, body, now_s=NOW.timestamp(), tolerance_s=300) == "bot"
    )


def test_the_reference_vector_of_the_scheme_verifies():
    # The Standard Webhooks specification's own example.
    secret = signatures.secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert (
        signatures.signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    )


@pytest.mark.parametrize(
    "tamper",
    ["body", "id", "timestamp", "old", "future", "no-v1", "garbage-timestamp", "missing"],
)
def test_any_change_or_a_stale_time_fails_verification(tamper):
    body = b'{"a": 1}'
    now = NOW.timestamp()
    at = int(now) - 600 if tamper == "old" else int(now) + 600 if tamper == "future" else int(now)
    headers = signatures.signed_headers(SECRET, "msg_1", at, body)
    secrets = [("bot", signatures.secret_bytes(SECRET))]
    if tamper == "body":
        body = b'{"a": 2}'
    elif tamper == "id":
        headers["webhook-id"] = "msg_2"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(int(now) + 1)
    elif tamper == "no-v1":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    elif tamper == "garbage-timestamp":
        headers["webhook-timestamp"] = "１２３"
    elif tamper == "missing":
        del headers["webhook-signature"]
    with pytest.raises(signatures.BadSignature):
        signatures.verify(secrets, headers, body, now_s=now, tolerance_s=300)


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_c2hvcnQ="])
def test_a_malformed_or_short_webhook_secret_is_refused(secret):
    with pytest.raises(ValueError):
        signatures.secret_bytes(secret)


# --- the key ring ----------------------------------------------------------------------------


def test_the_ring_finds_a_key_by_its_text_whether_it_holds_the_key_or_its_hash():
    ring = KeyRing(
        [
            ApiKey("a", frozenset({"signal"}), key_digest("key-a" * 6)),
            ApiKey(
                "b", frozenset({"read"}), bytes.fromhex(hashlib.sha256(b"key-b" * 6).hexdigest())
            ),
        ]
    )
    assert ring.by_key("key-a" * 6).name == "a"
    assert ring.by_key("key-b" * 6).name == "b"
    assert ring.by_key("key-c" * 6) is None
    assert ring.by_key("") is None


def test_a_keys_repr_shows_no_digest_or_secret():
    key = ApiKey("a", frozenset({"signal"}), key_digest("k" * 30), webhook_secret=b"s" * 32)
    assert key.digest.hex() not in repr(key)
    assert "sss" not in repr(key)
