"""The simulator's OKX answers have the shape of OKX's real answers, through the real ccxt.okx.

Compared, key by key and in every row, with every real OKX answer recorded
in ccxt's static fixtures for the calls the simulator serves
(tests/fixtures/ccxt/okx.json; see tests/sim/shapes.py for the rules), and
parsed by the installed ccxt both ways: the simulated answer through the
simulator, each recording through a second client whose transport answers
with it.

Some recordings are of other markets than the simulator's (a spot order, an
inverse or isolated position, a multi-currency account's balance): their
keys are those of the same endpoint, and their values' kinds are only used
where the state matches.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import ccxt
import pytest

from tests.sim.conftest import Simulator, load_fixture, okx_client
from tests.sim.shapes import differences
from tests.sim.test_fidelity import Recording, unified

BTC = "BTC/USDT:USDT"
OKX = load_fixture("okx")
IDS = frozenset({"ordId", "clOrdId", "id", "clientOrderId", "tag", "posId"})

MARKETS = "fetchMarkets: linear swap instruments (the info objects of ccxt's recorded OKX markets)"
CREATE = "createOrder: type2 & type3 together"
ORDER_FILLED = ("fetchOrder: fetch spot order", "fetchClosedOrders: Swap closed orders")
ORDER_LIVE = "fetchOpenOrders: fetch swap limit open order with take profit and stop loss"
POSITION_LINEAR = ("fetchPosition: fetch position", "fetchPositions: linear swap position")
POSITION_INVERSE = (
    "fetchPosition: Inverse swap cross fetch position",
    "fetchPosition: Inverse swap isolated fetch position",
)
TRADING_BALANCE = "fetchBalance: spot balance"
FUNDING_BALANCE = "fetchBalance: funding balance"


def responses(*names: str) -> list[Any]:
    return [entry["httpResponse"] for name in names for entry in OKX[name]]


def raw(client: ccxt.Exchange) -> Any:
    return json.loads(client.last_http_response)


def replayed(live: ccxt.okx, recorded: Any, call: Callable[[ccxt.okx], Any]) -> Any:
    """What the installed ccxt.okx makes of a recorded answer to ``call``."""
    replay = okx_client()
    replay.set_markets_from_exchange(live)
    replay.session.mount("https://", Recording(recorded))
    return call(replay)


def assert_like(
    client: ccxt.okx,
    call: Callable[[ccxt.okx], Any],
    recorded: list[Any],
    alike: list[Any] | None = None,
    parsed: list[Any] | None = None,
) -> Any:
    """Compare the simulated answer to ``call`` with the recordings, raw and parsed by ccxt."""
    alike = recorded if alike is None else alike
    parsed = alike if parsed is None else parsed
    simulated = call(client)
    assert differences(raw(client), recorded, alike, IDS) == []
    real = [item for body in parsed for item in unified(replayed(client, body, call))]
    assert simulated, "the simulated answer must hold something to compare"
    for item in unified(simulated):
        assert differences(item, real, ids=IDS) == []
    return simulated


# --- markets, tickers, time ----------------------------------------------------------


def test_instruments(sim: Simulator):
    client = okx_client()
    client.load_markets()
    markets = assert_like(client, lambda c: c.fetch_markets(), responses(MARKETS))
    by_symbol = {m["symbol"]: m for m in markets}
    # Contract values as OKX lists them: sizes are in contracts
    assert by_symbol[BTC]["contractSize"] == 0.01
    assert by_symbol["ETH/USDT:USDT"]["contractSize"] == 0.1
    assert by_symbol["DOGE/USDT:USDT"]["contractSize"] == 1000
    assert by_symbol[BTC]["precision"]["amount"] == 0.01
    assert all(m["swap"] and m["linear"] and m["settle"] == "USDT" for m in markets)


def test_ticker(okx: ccxt.okx, sim: Simulator):
    # The one recorded ticker is spot; a swap ticker has the same keys
    ticker = okx.fetch_ticker(BTC)
    assert differences(raw(okx), responses("fetchTicker: public spot ticker")) == []
    assert ticker["last"] == pytest.approx(65000)
    assert ticker["bid"] < ticker["last"] < ticker["ask"]
    assert ticker["timestamp"] is not None and ticker["baseVolume"] > 0


def test_server_time_status_and_account(okx: ccxt.okx, sim: Simulator):
    assert okx.fetch_time() > 0
    assert differences(raw(okx), responses("fetchTime: Fetch time")) == []
    assert okx.fetch_status()["status"] == "ok"
    assert differences(raw(okx), responses("fetchStatus: Fetch status")) == []
    (account,) = assert_like(
        okx, lambda c: c.fetch_accounts(), responses("fetchAccounts: Fetch accounts")
    )
    # A net-mode (one-way) account in futures mode, which trades swaps
    assert account["info"]["posMode"] == "net_mode"


# --- orders --------------------------------------------------------------------------


def test_create_order(okx: ccxt.okx, sim: Simulator):
    # The recording placed a market buy through batch-orders, as ccxt does by default
    order = assert_like(okx, lambda c: c.create_order(BTC, "market", "buy", 1), responses(CREATE))
    assert "/api/v5/trade/batch-orders" in okx.last_request_url
    assert order["id"] and order["clientOrderId"]


def test_resting_order(okx: ccxt.okx, sim: Simulator):
    # The recording is a resting post-only limit buy
    created = okx.create_order(BTC, "limit", "buy", 1, 60000, {"postOnly": True})
    okx.create_order(BTC, "limit", "buy", 2, 59000, {"postOnly": True})
    rows = responses(*ORDER_FILLED, ORDER_LIVE)
    live = responses(ORDER_LIVE)
    order = assert_like(okx, lambda c: c.fetch_order(created["id"], BTC), rows, live)
    assert order["status"] == "open" and order["amount"] == 1
    orders = assert_like(okx, lambda c: c.fetch_open_orders(BTC), rows, live)
    assert len(orders) == 2


def test_filled_order(okx: ccxt.okx, sim: Simulator):
    created = okx.create_order(BTC, "market", "buy", 1)
    okx.create_order(BTC, "market", "sell", 1, None, {"reduceOnly": True})
    rows = responses(*ORDER_FILLED, ORDER_LIVE)
    filled = responses(*ORDER_FILLED)
    order = assert_like(okx, lambda c: c.fetch_order(created["id"], BTC), rows, filled)
    assert order["status"] == "closed" and order["filled"] == 1
    orders = assert_like(okx, lambda c: c.fetch_closed_orders(BTC), rows, filled)
    assert len(orders) == 2


def test_cancel_answer(okx: ccxt.okx, sim: Simulator):
    # No cancel answer was recorded; OKX documents {clOrdId, ordId, sCode, sMsg, ts}
    created = okx.create_order(BTC, "limit", "buy", 1, 60000)
    canceled = okx.cancel_order(created["id"], BTC)
    body = raw(okx)
    assert set(body) == {"code", "data", "inTime", "outTime", "msg"}
    assert set(body["data"][0]) == {"clOrdId", "ordId", "sCode", "sMsg", "ts"}
    assert canceled["id"] == created["id"]


# --- positions and balance ---------------------------------------------------------


@pytest.mark.parametrize("call", ["fetch_position", "fetch_positions"])
def test_open_position(okx: ccxt.okx, sim: Simulator, call):
    okx.create_order(BTC, "market", "buy", 2)
    recorded = responses(*POSITION_LINEAR, *POSITION_INVERSE)
    alike = responses(*POSITION_LINEAR, POSITION_INVERSE[0])  # cross margin, like the simulator's
    method = (
        (lambda c: c.fetch_position(BTC))
        if call == "fetch_position"
        else (lambda c: c.fetch_positions([BTC]))
    )
    simulated = assert_like(okx, method, recorded, alike, parsed=responses(*POSITION_LINEAR))
    position = simulated if call == "fetch_position" else simulated[0]
    assert position["contracts"] == 2 and position["contractSize"] == 0.01
    assert position["side"] == "long" and position["marginMode"] == "cross"


def test_trading_balance(okx: ccxt.okx, sim: Simulator):
    okx.create_order(BTC, "market", "buy", 2)
    recorded = responses(TRADING_BALANCE)
    balance = okx.fetch_balance()
    assert differences(raw(okx), recorded) == []
    real = replayed(okx, recorded[0], lambda c: c.fetch_balance())
    assert differences(balance["USDT"], [real["USDT"]]) == []
    assert balance["USDT"]["total"] == pytest.approx(1_000_000, rel=1e-3)


def test_funding_balance(okx: ccxt.okx, sim: Simulator):
    # Everything is in the trading account: the funding account answers no rows
    balance = okx.fetch_balance({"type": "funding"})
    assert differences(raw(okx), responses(FUNDING_BALANCE)) == []
    assert raw(okx)["data"] == [] and "USDT" not in balance
