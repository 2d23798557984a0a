"""``execq chaos`` phases: each fault kind of the default plan alone, audited.

One stack (simulator, workers, beat) serves every phase (``workers.harness.chaos.chaos_stack``);
each phase installs one kind alone, sends a short stream, waits until quiet and
audits its signals. No kills, no restarts, no aged closes: what is under test
is the order path against one kind of exchange misbehaviour at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_chaos import assert_accounted_for

SEED = 21
SIGNALS_PER_KIND = 24
# Alone, an outcome fault (and a partial fill) hits this share of the creates.
PROBABILITY = 0.3

KINDS = (
    "timeout_after_accept",
    "timeout_before_accept",
    "rate_limit",
    "server_error",
    "visibility_lag",
    "positions_lag",
    "partial_fill",
)
# The effects delay or shrink, never fail: they stay on until the phase is quiet,
# so the reads after the fills (flat checks, recovery sweeps) see them too; the
# outcome faults are lifted once every signal reached the pipeline, as in a full run.
EFFECTS = ("visibility_lag", "positions_lag", "partial_fill")
# A short stream sees each kind many times: the outcome faults and partial fills on
# about 30 % of the creates (the plan's draws are seeded), the visibility lag on
# every create (a refused signal makes none); the positions lag on the positions
# reads of flat checks and sweeps.
MIN_FIRED = {kind: 5 for kind in KINDS} | {
    "visibility_lag": SIGNALS_PER_KIND * 3 // 4,
    "positions_lag": 1,
}


def test_single_fault_plans_are_the_default_plans_kinds() -> None:
    from workers.harness.chaos import fault_plan, single_fault_plans

    plans = single_fault_plans(SEED, probability=PROBABILITY)
    assert tuple(plans) == KINDS
    assert {rule["kind"] for rule in fault_plan(SEED)["rules"]} == set(KINDS)
    for kind, plan in plans.items():
        assert {rule["kind"] for rule in plan["rules"]} == {kind}
        assert all(rule.get("probability", PROBABILITY) == PROBABILITY for rule in plan["rules"])
    assert plans["visibility_lag"]["rules"] == [
        {"kind": "visibility_lag", "lag_ms": 2000},
        {"kind": "visibility_lag", "lag_ms": 20_000, "probability": PROBABILITY},
    ]


@pytest.fixture(scope="module")
def fault_phases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from workers.harness.chaos import chaos_stack, single_fault_plans

    with chaos_stack(
        workers=2,
        concurrency=8,
        kills=0,
        pauses=0,
        restart_redis=False,
        restart_postgres=False,
        aged=False,
        price_volatility=0,
        rate=40,
        seed=SEED,
        workdir=tmp_path_factory.mktemp("chaos-faults"),
        quiet_timeout_s=60,
    ) as chaos:
        yield {
            kind: chaos.phase(kind, plan, SIGNALS_PER_KIND, faults_until_quiet=kind in EFFECTS)
            for kind, plan in single_fault_plans(SEED, probability=PROBABILITY).items()
        }


@pytest.mark.services
@pytest.mark.parametrize("kind", KINDS)
def test_fault_kind_alone_audits_clean(fault_phases: dict[str, Any], kind: str) -> None:
    result = fault_phases[kind]
    summary = json.dumps(result, default=str)[:4000]
    assert result["faults"].get(kind, 0) >= MIN_FIRED[kind], summary
    assert set(result["faults"]) == {kind}, summary
    assert result["signals"] == SIGNALS_PER_KIND, summary
    assert_accounted_for(result)
