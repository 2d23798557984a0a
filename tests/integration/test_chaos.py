"""``execq chaos``: short runs under the default fault plan audit clean.

One with a worker kill on a given Redis database and the configured PostgreSQL
(neither of which a run may restart); one restarting its private Redis mid-run;
one restarting a private PostgreSQL mid-run. Each fault kind alone is
``test_chaos_faults.py``. The full run (2,000 signals, 3 kills, Redis and
PostgreSQL restarts) is ``execq chaos --private-postgres`` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import TEST_REDIS_URL, stored_order


def test_fault_plan_shares_are_the_documented_ones() -> None:
    from workers.harness.chaos import fault_plan

    rules = fault_plan(3)["rules"]
    effects = ("partial_fill", "visibility_lag", "positions_lag")
    outcomes = [rule for rule in rules if "probability" in rule and rule["kind"] not in effects]
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
    lags = [
        (rule["kind"], rule["lag_ms"], rule.get("probability"))
        for rule in rules
        if "lag_ms" in rule
    ]
    # Every order hidden 2 s; 3 % of them 20 s, past the lookup window
    assert lags == [
        ("visibility_lag", 2000, None),
        ("visibility_lag", 20_000, 0.03),
        ("positions_lag", 3000, None),
    ]
    partial = [rule for rule in rules if rule["kind"] == "partial_fill"]
    # One rule for every symbol, BTC included (a dust remainder ends unclosable).
    assert [(rule["probability"], rule.get("symbol")) for rule in partial] == [(0.10, None)]


def test_default_plan_adds_the_stream_faults_to_the_create_faults() -> None:
    from workers.harness.chaos import default_plan, fault_plan, stream_disconnect_rules

    plan = default_plan(3)
    create_rules = fault_plan(3)["rules"]
    assert plan["rules"][: len(create_rules)] == create_rules
    stream_rules = plan["rules"][len(create_rules) :]
    # 10 % of the pushed messages lost, on every stream
    assert {"kind": "stream_drop", "probability": 0.10} in stream_rules
    assert {rule["kind"] for rule in stream_rules} <= {
        "stream_drop",
        "stream_stall",
        "stream_delay",
    }
    assert default_plan(3, streams=False) == fault_plan(3)
    # Every 30 s a connection of each streaming exchange is cut, private and public in turn
    cuts = [stream_disconnect_rules(tick) for tick in range(2)]
    for rules in cuts:
        assert {rule["exchange"] for rule in rules} == {"binance", "bybit"}
        assert all(rule["kind"] == "stream_disconnect" and rule["count"] == 1 for rule in rules)
    assert [rules[0]["operation"] for rules in cuts] == ["private_stream", "public_stream"]


def test_signal_stream_is_seeded_and_mixed() -> None:
    from workers.harness.chaos import plan_signals

    first = plan_signals(500, random.Random(5), "s")
    assert first == plan_signals(500, random.Random(5), "s")
    assert first != plan_signals(500, random.Random(6), "s")
    kinds = {spec.kind for spec in first}
    assert kinds == {"open", "close", "invalid"}
    assert len({spec.signal_id for spec in first}) == 500
    assert {spec.account for spec in first} == {"binance", "bybit", "okx"}
    assert len({spec.symbol for spec in first}) == 5
    opens = {(s.account, s.symbol, s.amount) for s in first if s.kind == "open"}
    # Every producer close is the reduce-only opposite of an open sent before it.
    for spec in first:
        if spec.kind == "close":
            assert spec.reduce_only and (spec.account, spec.symbol, spec.amount) in opens


def short_run(workdir: Path, **options: Any) -> dict[str, Any]:
    """``run_chaos`` with two workers of eight threads and a two-minute quiet deadline."""
    from workers.harness.chaos import run_chaos

    return run_chaos(
        workers=2,
        concurrency=8,
        workdir=workdir,
        quiet_timeout_s=120,
        **options,
    )


def assert_accounted_for(result: dict[str, Any]) -> None:
    """Every signal sent has a terminal order or its refusal; the audit is clean."""
    summary = json.dumps(result, default=str)[:4000]
    assert result["all_processed_under_faults"], summary
    assert result["quiet"], summary
    assert (
        result["duplicates"],
        result["lost"],
        result["orphans"],
        result["stuck"],
        result["missing_events"],
    ) == (0, 0, 0, 0, 0), summary
    assert result["terminal"] + result["rejected_signals"] == result["signals"], summary
    assert result["clean"], summary


@pytest.mark.services
def test_short_chaos_run_audits_clean(database: str, tmp_path) -> None:
    # A Redis database and a PostgreSQL server someone else runs: the run must not restart them.
    given_redis = TEST_REDIS_URL.rsplit("/", 1)[0] + "/3"
    result = short_run(
        tmp_path,
        signals=150,
        rate=25,
        kills=1,
        pauses=1,
        restart_redis=True,
        restart_postgres=True,
        redis_url=given_redis,
        seed=11,
    )
    assert result["signals"] == 150
    assert result["kills"] == 1 and result["restart_details"]["workers"] == 1
    # A worker stopped past its lease and continued: its late requests doubled nothing
    assert result["pauses"] == 1
    # The stream holder died mid-run; a new one took its leases over once they expired
    assert result["stream_kills"] == 1 and result["restart_details"]["streams"] == 1
    assert result["restart_details"]["redis"] == 0 and result["restart_details"]["postgres"] == 0
    assert any("Redis restart skipped" in note for note in result["notes"]), result["notes"]
    assert_accounted_for(result)
    # The stream holder ran under its faults: messages were lost, and still fills
    # arrived by stream, every one booked once (the audit above)
    assert result["stream_messages"].get("stream_drop", 0) > 0, result["stream_messages"]
    assert result["fills"]["stream"] > 0, result["fills_by_source"]
    assert sum(result["fills"].values()) == sum(result["fills_by_source"].values())
    # The given database is left empty.
    client = redis.Redis.from_url(given_redis)
    assert client.dbsize() == 0
    client.close()


@pytest.mark.services
@pytest.mark.parametrize(
    ("server", "seed"),
    [
        # The broker, the rate limiter and the kill switch gone for a moment mid-stream.
        # A message popped (BRPOP) just as the connection drops is lost by kombu's
        # Redis transport before any worker code runs; the producers' outbox and the
        # recovery sweep send it again.
        pytest.param("redis", 12, id="redis-loses-no-signal"),
        # missing_events 0: every committed order state kept its event (both are
        # written in one transaction) across the restart.
        pytest.param("postgres", 13, id="postgres-loses-no-acknowledged-event"),
    ],
)
def test_server_restarted_mid_run(server: str, seed: int, tmp_path) -> None:
    """A private server restarted once mid-stream (the run's own Redis, or a private
    PostgreSQL), the other one left alone.

    A short stream at a fast rate, no kills, no aged closes (their position
    locks are not held that early in a run), the default faults.
    """
    result = short_run(
        tmp_path,
        signals=120,
        rate=40,
        kills=0,
        pauses=0,
        stream_kills=0,
        aged=False,
        restart_redis=server == "redis",
        restart_postgres=server == "postgres",
        private_postgres=server == "postgres",
        seed=seed,
    )
    assert result["signals"] == 120
    # The stream holder outlives the restart (it is never started again)
    restarts = {"workers": 0, "redis": 0, "postgres": 0, "beat": 0, "streams": 0} | {server: 1}
    assert result["restart_details"] == restarts, result["notes"]
    assert_accounted_for(result)


@pytest.mark.services
def test_audit_finds_order_states_without_their_events(db: None) -> None:
    from workers.harness.audit import missing_events
    from workers.store.db import session_scope
    from workers.store.models import Event

    recorded = {
        "complete": (
            stored_order("c-complete", "filled", "0.01"),
            ("order_intent", "order_submitting", "order_filled", "position_opened"),
        ),
        "intent": (stored_order("c-intent", "intent"), ("order_intent",)),
        "unbooked": (stored_order("c-unbooked", "filled", "0.01"), ("order_intent",)),
        "bare": (stored_order("c-bare", "rejected"), ()),
    }
    with session_scope() as session:
        session.add_all(row for row, _ in recorded.values())
        session.flush()
        session.add_all(
            Event(type=kind, order_id=row.id, client_order_id=row.client_order_id)
            for row, kinds in recorded.values()
            for kind in kinds
        )
    with session_scope() as session:
        assert missing_events(session) == [
            ("c-bare", "order_intent"),
            ("c-bare", "order_rejected"),
            ("c-unbooked", "order_filled"),
            ("c-unbooked", "position booking"),
        ]


@pytest.mark.services
def test_audit_counts_fills_by_how_they_reached_execq(db: None) -> None:
    from workers.harness.audit import fills_by_channel, fills_by_source
    from workers.store.db import session_scope
    from workers.store.models import Event

    # Given filled orders whose final event names its source, and one without a fill
    sources = {
        "c-stream-1": "stream",
        "c-stream-2": "stream",
        "c-create": "create",
        "c-follow": "create+follow",
        "c-tracking": "tracking",
    }
    with session_scope() as session:
        orders = {cid: stored_order(cid, "filled", "0.01") for cid in sources}
        orders["c-rejected"] = stored_order("c-rejected", "rejected")
        session.add_all(orders.values())
        session.flush()
        for cid, source in sources.items():
            session.add_all(
                [
                    Event(type="order_submitting", order_id=orders[cid].id, payload={}),
                    Event(type="order_filled", order_id=orders[cid].id, payload={"source": source}),
                ]
            )
        session.add(Event(type="order_rejected", order_id=orders["c-rejected"].id, payload={}))
    # When the audit counts them
    with session_scope() as session:
        by_source = fills_by_source(session)
    # Then each fill counts once, under its source, and the sources fold into three channels
    assert by_source == {"stream": 2, "create": 1, "create+follow": 1, "tracking": 1}
    assert fills_by_channel(by_source) == {"stream": 2, "create": 1, "poll": 2}
