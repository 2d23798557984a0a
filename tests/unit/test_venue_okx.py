"""The OKX venue's pure parts, with the real ccxt.okx class offline: its client ids, its error
translation (OKX's answers raised by ccxt's own ``handle_errors``), its markets and positions
in base units (OKX's recorded instruments and positions, tests/fixtures/ccxt/okx.json)."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import ccxt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.exchange.errors import (
    AccountRefused,
    Ambiguous,
    DuplicateClientId,
    OrderNotFound,
    RateLimited,
    Refused,
    StaleRequest,
)
from workers.exchange.venues import VENUES
from workers.exchange.venues.base import HedgeModeUnsupported
from workers.exchange.venues.okx import Okx
from workers.execution.client_ids import LEG, client_order_id

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ccxt" / "okx.json"
OKX_CLIENT_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


def recorded(method: str, description: str | None = None) -> dict:
    entries = json.loads(FIXTURE.read_text())["entries"]
    return next(
        entry
        for entry in entries
        if entry["method"] == method
        and (description is None or entry["description"] == description)
    )


def offline_client() -> ccxt.okx:
    """ccxt.okx with OKX's recorded USDT swap instruments as its markets; no network."""
    client = ccxt.okx(Okx.client_config({"options": {}}))
    answer = recorded("fetchMarkets")["httpResponse"]
    client.set_markets([client.parse_market(row) for row in answer["data"]])
    return client


def venue_on(client: ccxt.okx) -> Okx:
    return Okx("okx", lambda name: client)


# --- client ids ----------------------------------------------------------------------------

signal_ids = st.text(min_size=1, max_size=64).filter(lambda s: s.strip() != "")
legs = st.from_regex(LEG, fullmatch=True)


@given(signal_id=signal_ids, leg=legs)
def test_every_execq_id_becomes_a_valid_okx_client_id_deterministically(signal_id, leg):
    ours = client_order_id(signal_id, leg)
    theirs = Okx.client_id_for(ours)
    # OKX's clOrdId: 1-32 letters and digits; the same order always gets the same one
    assert OKX_CLIENT_ID.fullmatch(theirs)
    assert theirs == Okx.client_id_for(client_order_id(signal_id, leg))
    # It still reads as execq's: the prefix and the leg stay in front
    assert theirs.startswith(f"xq{leg}")


@given(signals=st.lists(signal_ids, min_size=2, max_size=30, unique=True), data=st.data())
def test_distinct_orders_keep_distinct_okx_client_ids(signals, data):
    # Given orders of many signals, each with some legs (open, close, chunks...)
    orders = {
        client_order_id(signal, leg)
        for signal in signals
        for leg in data.draw(st.lists(legs, min_size=1, max_size=4, unique=True))
    }
    # Then no two of them share an id on OKX
    assert len({Okx.client_id_for(cid) for cid in orders}) == len(orders)


def test_legs_that_prefix_each_other_stay_apart():
    # "chunk1" and "chunk10" of one signal: the digest alphabet has no digits 0, 1, 8 or 9
    ids = {Okx.client_id_for(client_order_id("s-1", leg)) for leg in ("chunk1", "chunk10")}
    assert len(ids) == 2


def test_an_id_execq_did_not_make_keeps_its_letters_and_digits():
    assert Okx.client_id_for("manual-order_7") == "manualorder7"
    assert Okx.client_id_for("abc123") == "abc123"


# --- error translation -----------------------------------------------------------------------


def okx_failure(client: ccxt.okx, answer: dict, status: int = 200) -> ccxt.BaseError:
    """What the real ccxt.okx raises for ``answer``, with the answer left as its last one."""
    body = json.dumps(answer)
    client.last_json_response = answer
    with pytest.raises(ccxt.BaseError) as raised:
        client.handle_errors(
            status, "", "https://www.okx.com/api/v5/x", "POST", {}, body, answer, {}, None
        )
    return raised.value


def failed_order(code: str, message: str) -> dict:
    entry = {"clOrdId": "xqopen1", "ordId": "", "sCode": code, "sMsg": message, "tag": ""}
    return {"code": "1", "data": [entry], "msg": "Operation failed."}


def refused(code: str, message: str) -> dict:
    return {"code": code, "data": [], "msg": message}


@pytest.mark.parametrize(
    ("answer", "status", "ccxt_class", "expected"),
    [
        (
            failed_order("51016", "Client order ID already exists."),
            200,
            ccxt.InvalidOrder,
            DuplicateClientId,
        ),
        (refused("51603", "Order does not exist."), 200, ccxt.OrderNotFound, OrderNotFound),
        (
            failed_order(
                "51400",
                "Order cancellation failed as the order has been filled, canceled or does not exist.",
            ),
            200,
            ccxt.OrderNotFound,
            OrderNotFound,
        ),
        (refused("50102", "Timestamp request expired."), 401, ccxt.InvalidNonce, StaleRequest),
        (
            refused("50036", "The expTime can't be earlier than the current system time."),
            200,
            ccxt.ExchangeError,
            StaleRequest,
        ),
        (
            failed_order("51008", "Order failed. Insufficient USDT margin in account"),
            200,
            ccxt.InsufficientFunds,
            Refused,
        ),
        (refused("50011", "Too Many Requests"), 429, ccxt.RateLimitExceeded, RateLimited),
        (
            refused("50061", "You've reached the maximum order rate limit for this account."),
            200,
            ccxt.ExchangeError,
            RateLimited,
        ),
        (
            failed_order("51169", "Order failed because you don't have any positions"),
            200,
            ccxt.ExchangeError,
            Refused,
        ),
        (
            failed_order("51170", "Reduce-only order in the direction of the position"),
            200,
            ccxt.ExchangeError,
            Refused,
        ),
        (refused("50004", "API endpoint request timeout"), 400, ccxt.RequestTimeout, Ambiguous),
        (
            refused("50103", 'Request header "OK-ACCESS-KEY" cannot be empty.'),
            401,
            ccxt.AuthenticationError,
            AccountRefused,
        ),
    ],
)
def test_each_okx_code_is_translated_to_what_the_lifecycle_needs(
    answer, status, ccxt_class, expected
):
    # Given OKX's answer as the real ccxt.okx raises it
    client = offline_client()
    error = okx_failure(client, answer, status)
    assert type(error) is ccxt_class
    # Then the venue names it by OKX's code: the failed order's sCode, else the answer's code
    translated = venue_on(client).translate(error, "create_order")
    assert type(translated) is expected
    code = answer["data"][0]["sCode"] if answer["data"] else answer["code"]
    assert translated.code == code
    assert translated.venue == "okx"


def test_a_failure_raised_before_sending_does_not_take_an_earlier_answers_code():
    # Given the last answer was a duplicate-client-id refusal
    client = offline_client()
    okx_failure(client, failed_order("51016", "Client order ID already exists."))
    # When ccxt refuses the next call itself (nothing sent, no answer of its own)
    local = ccxt.InvalidOrder(
        "okx amount of BTC/USDT:USDT must be greater than minimum amount precision of 0.1"
    )
    translated = venue_on(client).translate(local, "create_order")
    # Then it is the plain refusal it is, never "the order exists"
    assert type(translated) is Refused and translated.code is None


# --- markets and positions in base units ------------------------------------------------------


def test_markets_count_base_units_and_ccxts_own_stay_in_contracts():
    # Given OKX's recorded BTC swap: contracts of 0.01 BTC, lots of 0.1 contract
    client = offline_client()
    venue = venue_on(client)
    btc = venue.market("BTC/USDT:USDT")
    # Then execq sees a step and minimum of 0.001 BTC and a limit maximum of 1,000,000 BTC
    assert Decimal(str(btc["precision"]["amount"])) == Decimal("0.001")
    assert Decimal(str(btc["limits"]["amount"]["min"])) == Decimal("0.001")
    assert Decimal(str(btc["limits"]["amount"]["max"])) == Decimal("1000000")
    # and a market-order maximum of 12,000 contracts = 120 BTC
    assert venue.market_order_maximum(btc) == Decimal("120")
    # Prices are untouched, and the market is the one markets() lists
    assert btc["precision"]["price"] == client.market("BTC/USDT:USDT")["precision"]["price"]
    assert venue.markets()["BTC/USDT:USDT"] is btc
    # While ccxt's own market (what its create rounds against) still counts contracts
    assert client.market("BTC/USDT:USDT")["precision"]["amount"] == 0.1
    assert venue.contract_size("DOGE/USDT:USDT") == Decimal("1000")


def test_markets_are_converted_once_per_set_of_markets():
    # Given a venue that converted its markets once
    client = offline_client()
    venue = venue_on(client)
    first = venue.markets()
    # Then later reads get the same copies, until ccxt loads a new set of markets
    assert venue.markets() is first
    client.set_markets(list(client.markets.values()))
    assert venue.markets() is not first
    assert venue.markets()["ETH/USDT:USDT"]["precision"]["amount"] == pytest.approx(0.01)


def test_a_hedge_mode_position_is_refused():
    # Given OKX's recorded position of an account in hedge mode (posSide long)
    client = offline_client()
    (row,) = recorded("fetchPositions", "linear swap position")["httpResponse"]["data"]
    assert row["posSide"] == "long"
    with pytest.raises(HedgeModeUnsupported):
        venue_on(client).parse_position(client.parse_position(row))


def test_a_net_mode_position_is_signed_and_in_base_units():
    # Given such a row in net mode: 25 contracts short of ETH, 0.1 ETH each
    client = offline_client()
    (row,) = recorded("fetchPositions", "linear swap position")["httpResponse"]["data"]
    net = {**row, "posSide": "net", "pos": "-25", "instId": "ETH-USDT-SWAP"}
    position = venue_on(client).parse_position(client.parse_position(net))
    assert position.symbol == "ETH/USDT:USDT"
    assert position.size == Decimal("-2.5")


def test_the_venue_is_registered_for_its_ccxt_class():
    assert VENUES["okx"] is Okx
    assert Okx.exchange == "okx"
