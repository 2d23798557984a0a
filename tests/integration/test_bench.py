"""``execq bench``: a tiny run reports every figure with sane values.

No speed thresholds here: the targets are checked by the benchmark itself
(``execq bench`` exits 1 when one is missed), never by the test suite. What is
asserted is that the verdicts and the exit code follow from the figures.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from click.testing import CliRunner

from tests.conftest import ADMIN_DATABASE_URL, TEST_REDIS_URL

pytestmark = pytest.mark.services

KEYS = (
    "orders",
    "orders_per_s",
    "baseline_noop_per_s",
    "ratio",
    "p50_ms",
    "p99_ms",
    "latency_ms",
    "worker_rss_mb",
    "verified_per_s",
    "floor_create_per_s",
    "floor_ratio",
    "floor_p50_ms",
    "floor_p99_ms",
    "targets",
)


def _bench_databases() -> list[tuple[str]]:
    with psycopg.connect(ADMIN_DATABASE_URL) as admin:
        return admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (f"execq_bench_{os.getpid()}_%",),
        ).fetchall()


def test_bench_json_has_every_figure_and_leaves_nothing_behind(database: str, tmp_path) -> None:
    from workers.cli.harness_commands import bench
    from workers.harness.bench import CPU_PER_ORDER_FLOOR_FACTOR, P50_OVER_FLOOR_MS, RSS_TARGET_MB

    result = CliRunner().invoke(
        bench,
        [
            "--json",
            "--orders", "20",
            "--latency-ms", "20",
            "--rate", "10",
            "--rate-seconds", "1",
            "--concurrency", "4",
            "--workdir", str(tmp_path),
        ],
    )  # fmt: skip
    body = json.loads(result.output.strip().splitlines()[-1])
    for key in KEYS:
        assert key in body, key
    assert body["orders"] == 20
    assert body["statuses"] == {"filled": 20}
    assert body["latency_ms"] == 20
    assert body["orders_per_s"] > 0 and body["baseline_noop_per_s"] > 0
    assert body["ratio"] == pytest.approx(
        body["orders_per_s"] / body["baseline_noop_per_s"], rel=0.02
    )
    assert body["floor_ratio"] == pytest.approx(
        body["floor_create_per_s"] / body["baseline_noop_per_s"], rel=0.02
    )
    # The injected exchange latency is part of every enqueue -> ack time; the floor's
    # acks come from the simulator's ledger, so its creates reached the exchange.
    assert 20 <= body["p50_ms"] <= body["p99_ms"]
    assert 20 <= body["floor_p50_ms"] <= body["floor_p99_ms"]
    assert 0 < body["worker_rss_mb"] < 4096

    # The budget is read against the floor of the same run; the verdicts follow from the
    # figures, and the exit code from the verdicts.
    verdicts = {name: check["met"] for name, check in body["targets"].items()}
    cpu_factor = round(
        body["cpu_ms_per_order"]["workers"] / body["cpu_ms_per_floor_create"]["workers"], 2
    )
    assert verdicts == {
        "cpu_per_order_vs_floor": cpu_factor <= CPU_PER_ORDER_FLOOR_FACTOR,
        "p50_vs_floor": round(body["p50_ms"] - body["floor_p50_ms"], 2) <= P50_OVER_FLOOR_MS,
        "worker_rss_mb": body["worker_rss_mb"] <= RSS_TARGET_MB,
    }
    assert result.exit_code == (0 if all(verdicts.values()) else 1)

    # It ran on a Redis server of its own, stopped now, and dropped its database.
    assert urlsplit(body["redis_url"]).port != urlsplit(TEST_REDIS_URL).port
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(body["redis_url"], socket_connect_timeout=1).ping()
    assert _bench_databases() == []


def test_bench_on_a_given_redis_database_empties_it_afterwards(database: str, tmp_path) -> None:
    from workers.harness.bench import run_bench

    given = TEST_REDIS_URL.rsplit("/", 1)[0] + "/5"
    result = run_bench(
        orders=5,
        rate=5,
        rate_seconds=1,
        concurrency=2,
        redis_url=given,
        workdir=tmp_path,
        skip_latency=True,
    )
    assert result["orders"] == 5 and result["statuses"] == {"filled": 5}
    assert result["redis_url"] == given
    client = redis.Redis.from_url(given)
    assert client.dbsize() == 0
    client.close()
    assert _bench_databases() == []


def test_bench_refuses_a_redis_database_that_holds_keys(database: str, tmp_path) -> None:
    from workers.cli.harness_commands import bench

    given = TEST_REDIS_URL.rsplit("/", 1)[0] + "/6"
    client = redis.Redis.from_url(given)
    client.set("someone-elses", "data")
    try:
        result = CliRunner().invoke(bench, ["--redis-url", given, "--workdir", str(tmp_path)])
        assert result.exit_code == 2
        assert "holds 1 keys" in result.output and "Traceback" not in result.output
        assert client.get("someone-elses") == b"data"
    finally:
        client.delete("someone-elses")
        client.close()
    assert _bench_databases() == []


def test_sim_only_measures_the_simulator(tmp_path) -> None:
    from workers.harness.bench import run_bench, targets

    result = run_bench(sim_only=True, sim_seconds=1, sim_concurrency=4, workdir=tmp_path)
    assert result["mode"] == "sim-only"
    assert result["requests"] > 0 and result["req_per_s"] > 0
    assert result["errors"] == 0
    assert set(targets(result)) == {"sim_req_per_s"}


def test_ingress_bench_compares_the_api_with_the_python_producer(database: str, tmp_path) -> None:
    from workers.cli.harness_commands import bench
    from workers.harness.bench import INGRESS_RATIO_TARGET

    result = CliRunner().invoke(
        bench,
        ["--ingress", "--json", "--orders", "40", "--ingress-rate", "20", "--rate-seconds", "1",
         "--workdir", str(tmp_path)],
    )  # fmt: skip
    body = json.loads(result.output.strip().splitlines()[-1])
    # Every signal was accepted, by both paths, and paced ones too
    assert body["api_statuses"] == {"202": 40}
    assert body["paced_statuses"] == {"202": 20}
    assert body["with_worker_statuses"] == {"202": 20}
    assert body["ratio"] == pytest.approx(body["api_per_s"] / body["producer_per_s"], rel=0.02)
    assert 0 < body["p50_ms"] <= body["p99_ms"] <= body["max_ms"]
    # At 20/s the latency target does not apply; the ratio's verdict follows from the figure
    verdicts = {name: check["met"] for name, check in body["targets"].items()}
    assert verdicts == {"ratio": body["ratio"] >= INGRESS_RATIO_TARGET}
    assert result.exit_code == (0 if all(verdicts.values()) else 1)
    with psycopg.connect(ADMIN_DATABASE_URL) as admin:
        assert not admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (f"execq_ingress_{os.getpid()}_%",),
        ).fetchall()


def test_flow_bench_measures_the_streams_beside_the_sweep_alone(database: str, tmp_path) -> None:
    from workers.harness.bench_flows import run_flow_bench

    # Given the stream phase alone, small
    result = run_flow_bench(tmp_path, phases=("streams",), stream_positions=4, stream_orders=4)
    streams = result["streams"]

    # Then each figure was measured without the holder and with it, in the same run
    closes = streams["price_to_close_ms"]
    assert closes["sweep_only"]["n"] == closes["streams"]["n"] == 4
    assert 0 < closes["streams"]["p50_ms"] <= closes["streams"]["p99_ms"]
    # Without the holder the sweep claims every close; with it the pushed prices do
    assert closes["sweep_only"]["triggers"] == {"sweep": 4}
    assert closes["streams"]["triggers"].get("stream", 0) >= 1, closes["streams"]
    requests = streams["bybit_requests_beyond_create"]
    assert requests["polls"]["creates"] == requests["streams"]["creates"] == 4
    # Polling asks the exchange again after each create
    assert requests["polls"]["beyond_create_per_order"] >= 1, requests["polls"]
    # and the verdicts follow from the figures
    targets = streams["targets"]
    assert targets["price_to_close_p99_ms"]["met"] == (
        closes["streams"]["p99_ms"] <= targets["price_to_close_p99_ms"]["target"]
    )
    assert targets["bybit_requests_beyond_create"]["met"] == (
        requests["streams"]["beyond_create_per_order"]
        <= targets["bybit_requests_beyond_create"]["target"]
    )
