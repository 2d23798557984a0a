"""The OKX venue through the real ccxt.okx client against the simulator.

What execq asks of OKX, in execq's terms: amounts in base units both ways
(OKX counts contracts of ``ctVal``), execq's client ids mapped to OKX's
``clOrdId`` everywhere the exchange sees or answers one, each refusal translated
by OKX's own code, and a create signed valid only for its window (``expTime``).
The simulator's ledger is the exchange's record and speaks base units.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from tests.sim.conftest import Simulator
from workers.exchange import gateway
from workers.exchange.errors import (
    DuplicateClientId,
    OrderNotFound,
    RateLimited,
    Refused,
    StaleRequest,
)
from workers.exchange.venues.base import ExchangeOrder, OrderRequest, SigningWindow
from workers.exchange.venues.okx import Okx
from workers.execution.client_ids import client_order_id

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
DOGE = "DOGE/USDT:USDT"


@pytest.fixture
def okx(sim: Simulator) -> Okx:
    venue = gateway.venue("okx")
    assert isinstance(venue, Okx)
    return venue


def cid(signal: str, leg: str = "open") -> str:
    return client_order_id(signal, leg)


def market(symbol: str, side: str, amount: str, client_id: str, **fields) -> OrderRequest:
    return OrderRequest(
        symbol=symbol,
        order_type="market",
        side=side,
        amount=Decimal(amount),
        price=None,
        client_order_id=client_id,
        reduce_only=fields.get("reduce_only", False),
        time_in_force=None,
    )


def limit(symbol: str, side: str, amount: str, price: str, client_id: str) -> OrderRequest:
    return OrderRequest(
        symbol=symbol,
        order_type="limit",
        side=side,
        amount=Decimal(amount),
        price=Decimal(price),
        client_order_id=client_id,
        reduce_only=False,
        time_in_force="GTC",
    )


def signing(window_ms: int = 5000, age_ms: int = 0) -> SigningWindow:
    return SigningWindow(
        timestamp_ms=time.time_ns() // 1_000_000 - age_ms, recv_window_ms=window_ms
    )


def fault(**rule) -> dict:
    return {"rules": [{"exchange": "okx", **rule}]}


# --- orders in base units, by execq's ids --------------------------------------------------


def test_a_market_order_is_sent_in_contracts_and_reported_in_base_units(okx: Okx, sim: Simulator):
    ours = cid("venue-market")
    # When execq buys 0.005 BTC (0.5 contracts of 0.01 BTC), signed with its window
    created = okx.create_order(market(BTC, "buy", "0.005", ours), signing())
    # Then the create answers ids only (OKX's placement says nothing of the fill)
    assert okx.traits.create_reports_fill is False
    assert (created.status, created.filled) == (None, None)
    assert created.client_order_id == Okx.client_id_for(ours)
    # And the order, found by its exchange id and by execq's id, filled 0.005 BTC
    for seen in (
        okx.fetch_order(BTC, exchange_order_id=created.id, client_order_id=ours),
        okx.fetch_order(BTC, exchange_order_id=None, client_order_id=ours),
    ):
        assert seen is not None
        assert (seen.status, seen.amount, seen.filled) == (
            "closed",
            Decimal("0.005"),
            Decimal("0.005"),
        )
        assert seen.average == Decimal("65000")
        assert seen.id == created.id
    # The exchange holds 0.5 contracts under OKX's form of execq's id
    (entry,) = sim.orders("okx")
    assert entry["clientOrderId"] == Okx.client_id_for(ours)
    assert (entry["contracts"], entry["amount"]) == ("0.5", "0.005")
    # And the position reads 0.005 BTC long
    (position,) = okx.positions([BTC])
    assert position.size == Decimal("0.005")
    assert position.entry_price == Decimal("65000")


def test_a_limit_order_rests_is_listed_and_canceled_by_execqs_id(okx: Okx, sim: Simulator):
    ours = cid("venue-limit")
    # Given a resting buy of 30 DOGE (0.03 contracts of 1,000)
    okx.create_order(limit(DOGE, "buy", "30", "0.14", ours))
    # Then the open orders list it in base units under OKX's form of the id
    (listed,) = okx.open_orders()
    assert (listed.client_order_id, listed.symbol, listed.status) == (
        Okx.client_id_for(ours),
        DOGE,
        "open",
    )
    assert (listed.amount, listed.filled) == (Decimal("30"), Decimal("0"))
    # When it is canceled by execq's id
    answer = okx.cancel_order(DOGE, exchange_order_id=None, client_order_id=ours)
    assert answer.id == listed.id and answer.status is None  # ids only, like the create
    # Then it is canceled, and a second cancel is told it is no longer open (51400)
    seen = okx.fetch_order(DOGE, exchange_order_id=None, client_order_id=ours)
    assert seen is not None and seen.status == "canceled" and seen.filled == 0
    with pytest.raises(OrderNotFound) as again:
        okx.cancel_order(DOGE, exchange_order_id=None, client_order_id=ours)
    assert again.value.code == "51400"
    assert okx.open_orders() == []


def test_open_orders_page_through_more_than_one_answer(okx: Okx, sim: Simulator):
    # Given 105 resting orders (OKX lists at most 100 per answer)
    for index in range(105):
        okx.create_order(limit(ETH, "buy", "0.01", "3000", cid(f"venue-page-{index}")))
    # Then every one is listed once
    listed = okx.open_orders(ETH)
    assert len({order.id for order in listed}) == len(listed) == 105
    assert sim.requests_for("okx", "open_orders") == 2


def test_an_amount_that_is_not_whole_lots_is_refused_before_it_is_sent(okx: Okx, sim: Simulator):
    # 15 DOGE is 0.015 contracts; OKX takes lots of 0.01: ccxt would truncate it to 10 DOGE
    with pytest.raises(Refused) as refused:
        okx.create_order(market(DOGE, "buy", "15", cid("venue-lots")))
    assert refused.value.reached_exchange is False
    assert sim.requests_for("okx", "create_order") == 0


def test_a_lookup_of_an_unknown_client_id_asks_the_history_too(okx: Okx, sim: Simulator):
    assert okx.fetch_order(BTC, exchange_order_id=None, client_order_id=cid("venue-none")) is None
    assert sim.requests_for("okx", "fetch_order") == 1
    assert sim.requests_for("okx", "order_history") == 1


def test_a_finished_orders_client_id_places_a_second_order(okx: Okx, sim: Simulator):
    # Why the venue says OKX does not refuse a reused client id: once the order with it
    # is filled, the same clOrdId is a new order (a resend after a lost answer doubles it)
    ours = cid("venue-reuse")
    okx.create_order(market(BTC, "buy", "0.005", ours))
    okx.create_order(market(BTC, "buy", "0.005", ours))
    assert len(sim.orders("okx", Okx.client_id_for(ours))) == 2
    assert okx.traits.refuses_reused_client_id is False


def test_markets_and_positions_agree_with_the_simulators_base_units(okx: Okx, sim: Simulator):
    # OKX's BTC swap: 0.01 BTC contracts in lots of 0.01: a step of 0.0001 BTC
    btc = okx.market(BTC)
    assert Decimal(str(btc["precision"]["amount"])) == Decimal("0.0001")
    assert Decimal(str(btc["limits"]["amount"]["min"])) == Decimal("0.0001")
    assert okx.market_order_maximum(btc) == Decimal("120")
    # A position opened outside execq reads in base units, short as negative
    sim.set_position("okx", ETH, "-0.7", "3600")
    (position,) = okx.positions()
    assert (position.symbol, position.size, position.entry_price) == (
        ETH,
        Decimal("-0.7"),
        Decimal("3600"),
    )


# --- refusals, by OKX's code ---------------------------------------------------------------


def test_a_client_id_pending_on_another_order_is_a_duplicate(okx: Okx, sim: Simulator):
    ours = cid("venue-duplicate")
    okx.create_order(limit(BTC, "buy", "0.005", "60000", ours))
    with pytest.raises(DuplicateClientId) as duplicate:
        okx.create_order(market(BTC, "buy", "0.005", ours))
    assert duplicate.value.code == "51016"
    assert len(sim.orders("okx")) == 1


def test_insufficient_margin_is_a_refusal(okx: Okx, sim: Simulator):
    sim.faults(fault(kind="insufficient_margin", operation="create_order", count=1))
    with pytest.raises(Refused) as refused:
        okx.create_order(market(BTC, "buy", "0.005", cid("venue-margin")))
    assert refused.value.code == "51008"
    assert sim.orders("okx") == []


def test_a_reduce_only_order_without_a_position_is_a_refusal(okx: Okx, sim: Simulator):
    with pytest.raises(Refused) as refused:
        okx.create_order(market(BTC, "sell", "0.005", cid("venue-reduce"), reduce_only=True))
    assert refused.value.code == "51169"


def test_a_rate_limit_carries_okxs_retry_after(okx: Okx, sim: Simulator):
    sim.faults(fault(kind="rate_limit", operation="create_order", retry_after_s=3, count=1))
    with pytest.raises(RateLimited) as limited:
        okx.create_order(market(BTC, "buy", "0.005", cid("venue-429")))
    assert limited.value.code == "50011"
    assert limited.value.retry_after_s == 3.0


def test_an_unknown_order_id_is_not_found(okx: Okx, sim: Simulator):
    assert okx.fetch_order_by_id(BTC, "123456789") is None
    with pytest.raises(OrderNotFound) as missing:
        okx.cancel_order(BTC, exchange_order_id="123456789", client_order_id=None)
    assert missing.value.code == "51400"


# --- the signing window ----------------------------------------------------------------------


def test_a_create_arriving_after_its_window_is_refused_and_never_executes(okx: Okx, sim: Simulator):
    # Given creates held 800 ms on the way, and a create signed valid for 300 ms
    sim.faults(fault(kind="latency", operation="create_order", latency_ms=800))
    with pytest.raises(StaleRequest) as stale:
        okx.create_order(market(BTC, "buy", "0.005", cid("venue-late")), signing(window_ms=300))
    # Then OKX refused it on arrival (expTime passed: 50036), and nothing executed
    assert stale.value.code == "50036"
    assert sim.orders("okx") == []
    # While the same create signed for 5 s executes
    okx.create_order(market(BTC, "buy", "0.005", cid("venue-late")), signing(window_ms=5000))
    assert len(sim.orders("okx")) == 1
    # And the client sends no expTime on later requests
    assert "expTime" not in gateway.get_client("okx").headers


def test_a_create_signed_long_ago_is_refused_for_its_timestamp(okx: Okx, sim: Simulator):
    # Signed 40 s ago (OKX allows 30 s) with a window that has not run out yet
    with pytest.raises(StaleRequest) as stale:
        okx.create_order(
            market(BTC, "buy", "0.005", cid("venue-old")), signing(window_ms=60_000, age_ms=40_000)
        )
    assert stale.value.code == "50102"
    assert sim.orders("okx") == []


def test_answers_are_execqs_shape(okx: Okx, sim: Simulator):
    created = okx.create_order(market(ETH, "sell", "0.2", cid("venue-shape")))
    assert isinstance(created, ExchangeOrder)
    seen = okx.fetch_order(ETH, exchange_order_id=created.id, client_order_id=cid("venue-shape"))
    assert seen is not None and (seen.side, seen.reduce_only) == ("sell", False)
    assert seen.filled == Decimal("0.2")
    (position,) = okx.positions()
    assert position.size == Decimal("-0.2")
