"""``execq chaos``: a short run under the default fault plan and one worker kill audits clean.

The full run (2,000 signals, 3 kills, Redis and PostgreSQL restarts) is
``execq chaos --private-services``; its last figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import random

import pytest

# A scratch Redis database of its own: the session's shared worker consumes the test database.
CHAOS_REDIS_DB = int(os.environ.get("EXECQ_TEST_CHAOS_REDIS_DB", "14"))


def test_fault_plan_shares_match_issue_9() -> None:
    from workers.chaos import fault_plan

    rules = fault_plan(3)["rules"]
    outcomes = [rule for rule in rules if "probability" in rule and rule["kind"] != "partial_fill"]
    # Outcome rules fire in order, first one wins: the realised shares of all creates.
    left, shares = 1.0, {}
    for rule in outcomes:
        shares[rule["kind"]] = left * rule["probability"]
        left -= shares[rule["kind"]]
    assert shares == pytest.approx(
        {
            "timeout_after_accept": 0.20,
            "timeout_before_accept": 0.05,
            "rate_limit": 0.05,
            "server_error": 0.03,
        },
        abs=1e-5,
    )
    lags = {rule["kind"]: rule["lag_ms"] for rule in rules if "lag_ms" in rule}
    assert lags == {"visibility_lag": 2000, "positions_lag": 3000}
    partial = [rule for rule in rules if rule["kind"] == "partial_fill"]
    assert {rule["probability"] for rule in partial} == {0.10}
    # BTC's minimum is five steps: a partial fill there can leave an unclosable position.
    assert "BTC/USDT:USDT" not in {rule.get("symbol") for rule in partial}
    assert [rule.get("symbol") for rule in fault_plan(3, dust=True)["rules"][-1:]] == [None]


def test_signal_stream_is_seeded_and_mixed() -> None:
    from workers.chaos import plan_signals

    first = plan_signals(500, random.Random(5), "s")
    assert first == plan_signals(500, random.Random(5), "s")
    assert first != plan_signals(500, random.Random(6), "s")
    kinds = {spec.kind for spec in first}
    assert kinds == {"open", "close", "invalid"}
    assert len({spec.signal_id for spec in first}) == 500
    assert {spec.account for spec in first} == {"binance", "bybit"}
    assert len({spec.symbol for spec in first}) == 5
    opens = {(s.account, s.symbol, s.amount) for s in first if s.kind == "open"}
    # Every producer close is the reduce-only opposite of an open sent before it.
    for spec in first:
        if spec.kind == "close":
            assert spec.reduce_only and (spec.account, spec.symbol, spec.amount) in opens


@pytest.mark.services
def test_short_chaos_run_audits_clean(database: str, tmp_path) -> None:
    from workers.chaos import run_chaos

    result = run_chaos(
        signals=150,
        rate=25,
        workers=2,
        concurrency=8,
        kills=1,
        # The test's Redis and PostgreSQL are configured ones: the run must not restart them.
        restart_redis=True,
        restart_postgres=True,
        seed=11,
        redis_db=CHAOS_REDIS_DB,
        workdir=tmp_path,
        quiet_timeout_s=120,
    )
    summary = json.dumps(result, default=str)[:4000]
    assert result["signals"] == 150
    assert result["kills"] == 1 and result["restart_details"]["workers"] == 1
    assert result["restart_details"]["redis"] == 0 and result["restart_details"]["postgres"] == 0
    assert any("Redis restart skipped" in note for note in result["notes"]), summary
    assert result["quiet"], summary
    assert (result["duplicates"], result["lost"], result["orphans"], result["stuck"]) == (
        0,
        0,
        0,
        0,
    ), summary
    assert result["terminal"] + result["rejected_signals"] == result["signals"], summary
    assert result["clean"], summary
