"""Fixtures for the simulator and gateway tests: real ccxt clients through the gateway.

The simulator runs as a subprocess (``simulator_process`` in tests/conftest.py);
``sim`` resets it before each test. Clients come from ``workers.exchange.gateway``
exactly as workers get them, so ccxt's real URLs, signing and error mapping
are in play; only the transport adapter routes them to the simulator.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import ccxt
import pytest
import requests

from tests.conftest import ManagedProcess, SimulatorClient, free_port, wait_for
from workers.exchange import gateway
from workers.exchange.transport import ExchangeSession, ExchangeTransport

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ccxt"

# Short enough that a hanging simulator turns into RequestTimeout quickly,
# long enough for any honest answer on a busy CI machine.
TEST_TIMEOUT_MS = 1000
HANG_MS = 1500


class Simulator(SimulatorClient):
    """The admin API plus what these tests need beyond the shared client."""

    def full_stats(self) -> dict:
        """GET /_sim/stats as sent: requests per exchange and operation, total, fault rules."""
        response = self.http.get(f"{self.base_url}/_sim/stats", timeout=10)
        response.raise_for_status()
        return response.json()

    def requests_for(self, exchange: str, operation: str) -> int:
        return self.full_stats()["requests"].get(exchange, {}).get(operation, 0)

    def set_position(
        self, exchange: str, symbol: str, size: str, entry_price: str | None = None
    ) -> dict:
        body = {"exchange": exchange, "symbol": symbol, "size": size}
        if entry_price is not None:
            body["entryPrice"] = entry_price
        return self._post("/_sim/positions", body)

    def position(self, exchange: str, symbol: str) -> dict | None:
        for position in self.positions():
            if position["exchange"] == exchange and position["symbol"] == symbol:
                return position
        return None

    def orders(self, exchange: str, client_order_id: str | None = None) -> list[dict]:
        return [
            order
            for order in self.ledger()
            if order["exchange"] == exchange
            and (client_order_id is None or order["clientOrderId"] == client_order_id)
        ]

    def raw(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.http.request(method, f"{self.base_url}{path}", timeout=10, **kwargs)


@pytest.fixture
def sim(simulator_process) -> Simulator:  # noqa: ANN001 - fixture from tests/conftest.py
    """The simulator reset to its defaults: no faults, default prices, 1,000,000 USDT each."""
    client = Simulator(os.environ["EXECQ_SIM_URL"])
    client.reset()
    return client


@pytest.fixture(autouse=True)
def fresh_gateway() -> Iterator[None]:
    """Each test starts with no cached clients and no request hook."""
    gateway.reset_clients()
    gateway.set_request_hook(None)
    yield
    gateway.set_request_hook(None)
    gateway.reset_clients()


def client_for(account: str, timeout_ms: int = TEST_TIMEOUT_MS) -> ccxt.Exchange:
    client = gateway.get_client(account)
    client.timeout = timeout_ms
    return client


@pytest.fixture
def binance(sim: Simulator) -> ccxt.Exchange:
    return client_for("binance")


@pytest.fixture
def bybit(sim: Simulator) -> ccxt.Exchange:
    return client_for("bybit")


@pytest.fixture(params=["binance", "bybit"])
def exchange(request: pytest.FixtureRequest, sim: Simulator) -> ccxt.Exchange:
    """Each test using this runs once per exchange."""
    return client_for(request.param)


# What a user gives ccxt.okx: key, secret and the key's passphrase (``password``).
OKX_CREDENTIALS = {"apiKey": "sim-key", "secret": "sim-secret", "password": "sim-passphrase"}


def okx_client(timeout_ms: int = TEST_TIMEOUT_MS, **options: object) -> ccxt.okx:
    """A real ``ccxt.okx`` whose requests reach the simulator through execq's transport.

    The transport changes only scheme and host (the path ``/api/v5/...`` is
    kept), as it does for the other exchanges in ``sim`` mode. The options
    are the ones the gateway sets for every exchange; markets are not loaded.
    """
    client = ccxt.okx(
        {
            **OKX_CREDENTIALS,
            "enableRateLimit": False,
            "timeout": timeout_ms,
            "options": {
                "defaultType": "swap",
                "maxRetriesOnFailure": 0,
                "adjustForTimeDifference": False,
                "fetchMarkets": {"types": ["swap"]},
                **options,
            },
        }
    )
    session = ExchangeSession()
    session.trust_env = False
    transport = ExchangeTransport("okx", lambda: None, sim_url=os.environ["EXECQ_SIM_URL"])
    session.mount("https://", transport)
    client.session = session
    return client


@pytest.fixture
def okx(sim: Simulator) -> ccxt.okx:
    client = okx_client()
    client.load_markets()
    return client


def load_fixture(exchange: str) -> dict[str, list[dict]]:
    """The copied ccxt fixture entries, keyed by "method: description" (a key may repeat)."""
    data = json.loads((FIXTURES / f"{exchange}.json").read_text())
    entries: dict[str, list[dict]] = {}
    for entry in data["entries"]:
        entries.setdefault(f"{entry['method']}: {entry['description']}", []).append(entry)
    return entries


def fetch_order_params(client: ccxt.Exchange) -> dict:
    """Bybit's fetch_order needs this acknowledgement (it only sees the last 500 orders)."""
    return {"acknowledged": True} if client.id == "bybit" else {}


def sim_name(client: ccxt.Exchange) -> str:
    return {"bybit": "bybit", "okx": "okx"}.get(client.id, "binance")


# --- the simulator with its stream port --------------------------------------------------


class StreamSimulator(Simulator):
    """A simulator serving the WebSocket streams too, on ``ws_url``."""

    def __init__(self, base_url: str, ws_url: str) -> None:
        super().__init__(base_url)
        self.ws_url = ws_url

    def streams(self) -> dict:
        """GET /_sim/streams: connections, listen keys, message counts."""
        response = self.http.get(f"{self.base_url}/_sim/streams", timeout=10)
        response.raise_for_status()
        return response.json()

    def connections(self, exchange: str, stream: str | None = None) -> list[dict]:
        return [
            c
            for c in self.streams()["connections"]
            if c["exchange"] == exchange and (stream is None or c["stream"] == stream)
        ]

    def subscribed(self, exchange: str, subscription: str) -> bool:
        """Whether a connection to ``exchange`` has subscribed ``subscription`` (a stream
        name or topic; ``listenKey`` for a Binance user data stream on the active key)."""
        if subscription == "listenKey":
            active = self.streams()["listenKeys"]["binance"]
            return active is not None and any(
                c.get("listenKey") == active["listenKey"] for c in self.connections(exchange)
            )
        return any(subscription in c["subscriptions"] for c in self.connections(exchange))

    def message_counts(self, exchange: str, stream: str) -> dict[str, int]:
        return self.streams()["messages"].get(exchange, {}).get(stream, {})


def start_stream_simulator(*extra_args: str) -> tuple[ManagedProcess, StreamSimulator]:
    """A simulator subprocess with a stream port, ready to answer."""
    port, ws_port = free_port(), free_port()
    while ws_port == port:
        ws_port = free_port()
    process = ManagedProcess(
        "sim-streams",
        [
            sys.executable,
            "-m",
            "exchange_sim",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws-port",
            str(ws_port),
            *extra_args,
        ],
    ).start()
    client = StreamSimulator(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{ws_port}")

    def ready() -> bool:
        if not process.alive:
            raise AssertionError(f"simulator exited:\n{process.log_tail()}")
        try:
            client.streams()
            socket.create_connection(("127.0.0.1", ws_port), timeout=1).close()
            return True
        except (requests.ConnectionError, OSError):
            return False

    wait_for(ready, 20, message="simulator with streams did not start")
    return process, client


@pytest.fixture(scope="session")
def stream_simulator_process() -> Iterator[StreamSimulator]:
    process, client = start_stream_simulator()
    yield client
    process.stop()


@pytest.fixture
def stream_sim(stream_simulator_process: StreamSimulator) -> StreamSimulator:
    """The simulator with streams, reset: no faults, default prices, no stream connections."""
    stream_simulator_process.reset()
    return stream_simulator_process
