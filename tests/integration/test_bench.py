"""``execq bench``: a tiny run reports every figure with sane values.

No speed thresholds here: the targets are checked by the benchmark itself
(``execq bench`` exits 1 when one is missed), never by the test suite.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

# A scratch Redis database of its own: the session's shared worker consumes the test database.
from tests.conftest import BENCH_TEST_REDIS_DB as BENCH_REDIS_DB

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


def test_bench_json_has_every_figure(database: str, tmp_path) -> None:
    from workers.cli.harness_commands import bench

    result = CliRunner().invoke(
        bench,
        [
            "--json",
            "--orders", "20",
            "--latency-ms", "20",
            "--rate", "10",
            "--rate-seconds", "1",
            "--concurrency", "4",
            "--redis-db", str(BENCH_REDIS_DB),
            "--workdir", str(tmp_path),
        ],
    )  # fmt: skip
    # 0 targets met, 1 a target missed: either way the run completed.
    assert result.exit_code in (0, 1), result.output
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
    assert set(body["targets"]) >= {"p99_ms", "worker_rss_mb"}
    assert all(check["met"] in (True, False) for check in body["targets"].values())


def test_bench_leaves_no_database_behind(database: str, tmp_path) -> None:
    """The scratch database is dropped and the scratch Redis database emptied."""
    import psycopg
    import redis

    from tests.conftest import ADMIN_DATABASE_URL
    from workers.harness.bench import redis_url_with_db, run_bench

    result = run_bench(
        orders=5,
        rate=5,
        rate_seconds=1,
        concurrency=2,
        redis_db=BENCH_REDIS_DB,
        workdir=tmp_path,
        skip_latency=True,
    )
    assert result["orders"] == 5
    with psycopg.connect(ADMIN_DATABASE_URL) as admin:
        left = admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (f"execq_bench_{os.getpid()}_%",),
        ).fetchall()
    assert left == []
    client = redis.Redis.from_url(redis_url_with_db(os.environ["REDIS_URL"], BENCH_REDIS_DB))
    assert client.dbsize() == 0
    client.close()


def test_sim_only_measures_the_simulator(tmp_path) -> None:
    from workers.harness.bench import run_bench, targets

    result = run_bench(sim_only=True, sim_seconds=1, sim_concurrency=4, workdir=tmp_path)
    assert result["mode"] == "sim-only"
    assert result["requests"] > 0 and result["req_per_s"] > 0
    assert result["errors"] == 0
    assert set(targets(result)) == {"sim_req_per_s"}
