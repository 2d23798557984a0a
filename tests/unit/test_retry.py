"""Retry policies: the seed's numbers, tenacity's parts, and waits that never pass a cap."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

from workers.execution.retry import RetryClass, RetryPolicies, RetryPolicy, lookup_delays

# --- policies -------------------------------------------------------------------------


def test_default_policies_carry_the_seed_numbers():
    policies = RetryPolicies.default()
    assert policies.for_class(RetryClass.RATE_LIMITED) == RetryPolicy(
        RetryClass.RATE_LIMITED, 5, 2.0, 60.0
    )
    assert policies.for_class(RetryClass.TRANSIENT) == RetryPolicy(
        RetryClass.TRANSIENT, 3, 1.0, 10.0
    )
    assert policies.for_class(RetryClass.UNKNOWN) == RetryPolicy(RetryClass.UNKNOWN, 2, 0.5, 5.0)
    assert policies.for_class(RetryClass.PERMANENT).attempts == 1
    ambiguous = policies.for_class(RetryClass.AMBIGUOUS)
    assert (ambiguous.attempts, ambiguous.base_s, ambiguous.cap_s) == (3, 1.0, 10.0)


def test_policies_from_the_real_settings_model_match_the_defaults():
    from workers.settings import RetrySettings

    assert RetryPolicies.from_settings(RetrySettings()) == RetryPolicies.default()


def test_policies_from_overridden_settings():
    # Given settings compressed for tests (duck-typed: any object with the attributes)
    settings = SimpleNamespace(
        rate_limited=SimpleNamespace(attempts=7, base_s=0.2, cap_s=1),
        transient=SimpleNamespace(attempts=4, base_s=0.1, cap_s=0.5),
        unknown=SimpleNamespace(attempts=2, base_s=0.1, cap_s=0.5),
    )
    policies = RetryPolicies.from_settings(settings)
    # Then each class takes its numbers, and ambiguous paces itself like transient
    assert policies.rate_limited.attempts == 7
    assert policies.ambiguous.base_s == 0.1 and policies.ambiguous.cap_s == 0.5
    assert policies.permanent.attempts == 1


def test_every_class_has_a_policy_of_its_own_class():
    policies = RetryPolicies.default()
    for retry_class in RetryClass:
        assert policies.for_class(retry_class).retry_class is retry_class


def _state(attempt_number: int) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = attempt_number
    return state


@pytest.mark.parametrize("retry_class", list(RetryClass))
def test_stop_after_the_configured_attempts(retry_class):
    policy = RetryPolicies.default().for_class(retry_class)
    stop = policy.stop()
    assert not any(stop(_state(n)) for n in range(1, policy.attempts))
    assert stop(_state(policy.attempts))


def test_permanent_stops_after_the_first_attempt():
    assert RetryPolicies.default().permanent.stop()(_state(1))


@given(
    attempt=st.integers(min_value=1, max_value=60), retry_class=st.sampled_from(list(RetryClass))
)
def test_waits_grow_from_the_base_and_never_pass_the_cap(attempt, retry_class):
    policy = RetryPolicies.default().for_class(retry_class)
    waited = policy.wait()(_state(attempt))
    assert 0 <= waited <= policy.cap_s
    assert waited <= policy.delay_for(attempt)
    assert waited >= min(policy.base_s * 2 ** min(attempt - 1, 60), policy.cap_s)


def test_rate_limit_waits_follow_the_seed_schedule():
    policy = RetryPolicies.default().rate_limited
    # 2, 4, 8, 16 s plus up to 2 s of jitter, never above 60 s
    assert [policy.delay_for(n) for n in range(1, 7)] == [4.0, 6.0, 10.0, 18.0, 34.0, 60.0]


def test_a_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        RetryPolicy(RetryClass.TRANSIENT, 0, 1.0, 10.0)
    with pytest.raises(ValueError):
        RetryPolicy(RetryClass.TRANSIENT, 3, -1.0, 10.0)
    with pytest.raises(ValueError):
        RetryPolicies.default().transient.delay_for(0)


# --- lookup delays -------------------------------------------------------------------------


def test_lookup_delays_follow_seed_003():
    assert lookup_delays(5, 0.5, 1.5) == [0.5, 0.75, 1.125, 1.6875, 2.53125]


def test_lookup_delays_edge_cases():
    assert lookup_delays(0, 0.5, 1.5) == []
    with pytest.raises(ValueError):
        lookup_delays(3, 0.5, 0.9)
