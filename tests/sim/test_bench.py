"""The load generator works end to end (a smoke run; the throughput figure is not a test)."""

from __future__ import annotations

from exchange_sim.bench import run_load
from tests.sim.conftest import Simulator


def test_run_load_drives_signed_creates_and_fetches(sim: Simulator):
    # One process keeps the smoke run short; the real benchmark spreads over two
    result = run_load(sim.base_url, seconds=0.5, concurrency=4, processes=1)
    assert result["requests"] > 0 and result["errors"] == 0
    assert result["req_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["server_cpu_ms_per_request"] > 0
    # Creates and fetches on both exchanges, each create followed by its fetch
    requests = sim.full_stats()["requests"]
    for exchange in ("binance", "bybit"):
        assert requests[exchange]["create_order"] > 0
        assert requests[exchange]["fetch_order"] > 0
    assert sim.ledger()
