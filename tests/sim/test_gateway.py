"""The gateway: one real ccxt client per process, thread and account; markets loaded once."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import ccxt
import pytest
import requests

from tests.sim.conftest import Simulator
from workers.exchange import gateway
from workers.exchange.errors import Refused
from workers.exchange.transport import ORIGINAL_HOST_HEADER, ExchangeTransport
from workers.settings import ExchangeAccount, get_settings


def in_thread(function):
    """Run ``function`` in a new thread and return its result (or raise its exception)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function).result(timeout=30)


def test_one_client_per_thread_sharing_one_set_of_markets(sim: Simulator):
    # Given a client in this thread
    here = gateway.get_client("binance")
    # When another thread asks for the same account
    there = in_thread(lambda: gateway.get_client("binance"))
    # Then it gets its own client (ccxt sync clients are not thread-safe) ...
    assert there is not here
    assert gateway.get_client("binance") is here
    # ... sharing the markets by reference, loaded from the exchange once
    assert there.markets is here.markets
    assert there.markets_by_id is here.markets_by_id
    assert sim.requests_for("binance", "markets") == 1
    # And per-account facts ccxt would look up again are shared too
    assert there.options["leverageBrackets"] is here.options["leverageBrackets"]


def test_bybit_account_detection_happens_once(sim: Simulator):
    first = gateway.get_client("bybit")
    second = in_thread(lambda: gateway.get_client("bybit"))
    assert second.options["enableUnifiedAccount"] is True
    # instruments-info is asked twice (trading and pre-launch), query-api + account/info once
    assert sim.requests_for("bybit", "markets") == 2
    assert sim.requests_for("bybit", "account") == 2
    second.fetch_balance()
    assert sim.requests_for("bybit", "account") == 2
    assert first is not second


def test_a_new_client_is_kept_out_of_full_garbage_collections(sim: Simulator):
    # Given the collector's frozen (never walked) objects now
    before = gc.get_freeze_count()
    try:
        # When a thread builds its client
        client = in_thread(lambda: gateway.get_client("binance"))
        # Then the client is among the frozen objects a full collection skips
        assert gc.get_freeze_count() > before
        assert client.markets
    finally:
        gc.unfreeze()


def test_client_configuration(sim: Simulator):
    client = gateway.get_client("binance")
    assert client.enableRateLimit is False
    assert client.options["maxRetriesOnFailure"] == 0
    assert client.options["adjustForTimeDifference"] is False
    assert client.timeout == get_settings().exchange_timeout_ms
    # The real URLs stay: only the transport knows about the simulator
    assert urlsplit(client.urls["api"]["fapiPrivate"]).hostname == "fapi.binance.com"
    assert isinstance(client.session.get_adapter("https://fapi.binance.com/"), ExchangeTransport)


def test_no_retries_inside_ccxt(sim: Simulator):
    client = gateway.get_client("binance")
    sim.faults({"rules": [{"kind": "server_error", "status": 503}]})
    before = sim.requests_for("binance", "tickers")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.fetch_ticker("BTC/USDT:USDT")
    assert sim.requests_for("binance", "tickers") == before + 1


def test_the_request_hook_sees_every_request_with_the_account(sim: Simulator):
    seen: list[tuple[str, str, str]] = []

    def hook(account: str, request: requests.PreparedRequest) -> None:
        seen.append((account, request.method or "", urlsplit(request.url or "").hostname or ""))

    gateway.set_request_hook(hook)
    client = gateway.get_client("bybit")
    client.fetch_ticker("BTC/USDT:USDT")
    # Markets, account detection and the ticker all passed the hook, with the real host
    assert len(seen) == 5
    assert {entry[0] for entry in seen} == {"bybit"}
    assert {entry[2] for entry in seen} == {"api.bybit.com"}


def test_a_hook_that_raises_stops_the_request(sim: Simulator):
    class Throttled(Exception):
        pass

    client = gateway.get_client("binance")
    before = sim.full_stats()["total"]

    def refuse(account: str, request: requests.PreparedRequest) -> None:
        raise Throttled(account)

    # A hook set after the client was built applies to it too
    gateway.set_request_hook(refuse)
    with pytest.raises(Throttled):
        client.fetch_ticker("BTC/USDT:USDT")
    assert sim.full_stats()["total"] == before


def test_the_simulator_is_told_the_original_host(sim: Simulator):
    client = gateway.get_client("binance")
    client.fetch_ticker("BTC/USDT:USDT")
    response = client.session.get(
        "https://fapi.binance.com/fapi/v1/time", timeout=5
    )  # the session alone, as ccxt uses it
    assert response.ok and "serverTime" in response.json()
    assert response.request.headers[ORIGINAL_HOST_HEADER] == "fapi.binance.com"


def test_reset_clients_builds_new_ones(sim: Simulator):
    first = gateway.get_client("binance")
    gateway.reset_clients()
    assert gateway.get_client("binance") is not first


def test_a_venue_returns_the_ccxt_market_and_refuses_an_unknown_symbol(sim: Simulator):
    market = gateway.venue("bybit").market("ETH/USDT:USDT")
    assert market["id"] == "ETHUSDT" and market["linear"]
    with pytest.raises(Refused) as refused:
        gateway.venue("bybit").market("NOPE/USDT:USDT")
    # The venue's error names the account and the operation, and keeps ccxt's as its cause
    assert refused.value.operation == "markets" and refused.value.venue == "bybit"
    assert isinstance(refused.value.__cause__, ccxt.BadSymbol)


def test_an_unknown_account_is_a_gateway_error():
    with pytest.raises(gateway.GatewayError, match="no exchange account"):
        gateway.get_client("kraken")
    with pytest.raises(gateway.GatewayError, match="no exchange account"):
        gateway.venue("kraken")


@pytest.mark.parametrize(
    ("ccxt_class", "mode", "host"),
    [
        ("binanceusdm", "demo", "demo-fapi.binance.com"),
        ("bybit", "demo", "api-demo.bybit.com"),
        ("bybit", "testnet", "api-testnet.bybit.com"),
        ("binanceusdm", "live", "fapi.binance.com"),
        ("bybit", "live", "api.bybit.com"),
    ],
)
def test_modes_use_ccxts_own_switches(ccxt_class, mode, host):
    account = ExchangeAccount(
        name="acct", ccxt_class=ccxt_class, mode=mode, api_key="k", secret="s"
    )
    client = gateway.build_client(account)
    api = client.urls["api"]
    url = api["fapiPrivate"] if ccxt_class == "binanceusdm" else api["private"]
    assert urlsplit(client.implode_hostname(url)).hostname == host
    # Outside sim mode the transport only runs the hook; it does not re-route
    adapter = client.session.get_adapter("https://example.com/")
    assert isinstance(adapter, ExchangeTransport) and adapter._sim is None


def test_binance_has_no_futures_testnet():
    account = ExchangeAccount(
        name="acct", ccxt_class="binanceusdm", mode="testnet", api_key="k", secret="s"
    )
    with pytest.raises(gateway.GatewayError, match="demo"):
        gateway.build_client(account)


@pytest.fixture
def two_binance_accounts(monkeypatch: pytest.MonkeyPatch):
    accounts = [
        {"name": "alpha", "ccxt_class": "binanceusdm", "mode": "sim"},
        {"name": "beta", "ccxt_class": "binanceusdm", "mode": "sim"},
    ]
    monkeypatch.setenv("EXECQ_ACCOUNTS", json.dumps(accounts))
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("EXECQ_ACCOUNTS")
    get_settings.cache_clear()


def test_accounts_on_one_exchange_share_markets_not_account_facts(
    sim: Simulator, two_binance_accounts
):
    alpha, beta = gateway.get_client("alpha"), gateway.get_client("beta")
    assert alpha.markets is beta.markets
    assert sim.requests_for("binance", "markets") == 1
    # Leverage brackets belong to an account: each account asked once
    assert sim.requests_for("binance", "other") == 2


MEMORY_PROBE = """
import threading
from workers.exchange import gateway

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 1e6

gateway.get_client("binance"), gateway.get_client("bybit")
before = rss_mb()
report = {}
barrier = threading.Barrier(32, action=lambda: report.update(after=rss_mb()))

def worker():
    for account in ("binance", "bybit"):
        gateway.get_client(account).fetch_ticker("BTC/USDT:USDT")
    barrier.wait()

threads = [threading.Thread(target=worker) for _ in range(32)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(report["after"] - before)
"""


def test_32_threads_of_clients_stay_small(sim: Simulator):
    # A worker process with 32 threads holds 64 clients (two accounts each)
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        check=True,
    )
    growth_mb = float(result.stdout.strip().splitlines()[-1])
    # Measured at about 18 MB (threads included): markets are shared, not copied
    assert growth_mb < 40, result.stdout
