"""The one retry executor: per-class attempts and backoff, Retry-After, and a deadline that
sends the task back to the queue instead of sleeping past it. Nothing here sleeps: the
executor's sleep is recorded."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.exchange.errors import (
    Ambiguous,
    NotSent,
    RateLimited,
    Refused,
    Throttled,
    Unexpected,
)
from workers.execution.retry import RetryClass, RetryPolicies
from workers.retrying import (
    Requeue,
    call_with_retries,
    pause,
    poll,
    read,
    retry_class_of,
    wait_for_grant,
)

POLICIES = RetryPolicies.default()
FAR = 10_000.0


def scripted(*outcomes):
    """A call that raises or returns each outcome in turn; ``calls`` counts them."""
    calls = []

    def call():
        calls.append(1)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return call, calls


def run_create(call, slept, *, deadline_s=FAR, retry_if=lambda exc: isinstance(exc, NotSent)):
    return call_with_retries(
        call,
        policies=POLICIES,
        deadline=time.monotonic() + deadline_s,
        retry_if=retry_if,
        mutating=True,
        sleep=slept.append,
    )


def test_a_failure_that_did_not_execute_is_sent_again_after_its_backoff():
    # Given a create refused before it left, then accepted
    slept: list[float] = []
    call, calls = scripted(NotSent("refused"), {"id": "1"})
    # When it runs through the executor
    result = run_create(call, slept)
    # Then it took two calls and one transient backoff (1 s plus up to 1 s of jitter)
    assert result == {"id": "1"} and len(calls) == 2
    assert len(slept) == 1 and 1.0 <= slept[0] <= 2.0


def test_a_failure_that_may_have_executed_is_never_sent_again_by_default():
    slept: list[float] = []
    call, calls = scripted(Ambiguous("read timeout"), {"id": "dup"})
    with pytest.raises(Ambiguous):
        run_create(call, slept)
    assert (len(calls), slept) == (1, [])


def test_a_refusal_is_tried_once():
    slept: list[float] = []
    call, calls = scripted(Refused("margin"), {"id": "never"})
    with pytest.raises(Refused):
        run_create(call, slept, retry_if=lambda exc: True)
    assert (len(calls), slept) == (1, [])


def test_each_class_counts_its_own_attempts():
    # Given rate limits (5 tries) interleaved with transient failures (3 tries)
    slept: list[float] = []
    failures = [RateLimited("429"), NotSent("reset"), RateLimited("429"), NotSent("reset")]
    call, calls = scripted(*failures, RateLimited("429"), RateLimited("429"), {"id": "ok"})
    # Then neither class ran out: 2 transient and 4 rate-limited failures are within policy
    assert run_create(call, slept) == {"id": "ok"}
    assert len(calls) == 7


def test_rate_limited_gives_up_after_five_tries():
    slept: list[float] = []
    call, calls = scripted(*[RateLimited("429")] * 10)
    with pytest.raises(RateLimited):
        run_create(call, slept)
    assert len(calls) == 5 and len(slept) == 4
    assert sum(slept) <= POLICIES.rate_limited.total_wait_s()


def test_the_exchanges_retry_after_lengthens_the_wait():
    slept: list[float] = []
    call, _ = scripted(RateLimited("429", retry_after_s=12.0), {"id": "1"})
    run_create(call, slept)
    assert slept == [12.0]


def test_a_wait_past_the_deadline_goes_back_to_the_queue():
    # Given a rate limit asking for 30 s in a run with 5 s left
    slept: list[float] = []
    call, calls = scripted(RateLimited("429", retry_after_s=30.0), {"id": "late"})
    # Then nothing sleeps: the task is requeued with the wait as its countdown
    with pytest.raises(Requeue) as requeue:
        run_create(call, slept, deadline_s=5.0)
    assert requeue.value.countdown_s == 30.0
    assert (len(calls), slept) == (1, [])


def test_a_hook_sees_every_failure_before_its_wait():
    seen: list[tuple[str, float]] = []
    call, _ = scripted(Throttled("budget", wait_s=0.3), {"id": "1"})
    call_with_retries(
        call,
        policies=POLICIES,
        deadline=time.monotonic() + FAR,
        retry_if=lambda exc: isinstance(exc, NotSent),
        mutating=True,
        before_sleep=lambda exc, wait_s: seen.append((type(exc).__name__, wait_s)),
        sleep=lambda s: None,
    )
    assert seen[0][0] == "Throttled" and seen[0][1] >= 0.3


def test_a_read_retries_what_a_create_may_not_and_surfaces_the_last_failure():
    slept: list[float] = []
    call, calls = scripted(Ambiguous("timeout"), Ambiguous("timeout"), {"ok": True})
    assert read(call, policies=POLICIES, budget_s=FAR, sleep=slept.append) == {"ok": True}
    assert len(calls) == 3

    call, calls = scripted(Ambiguous("timeout"), Ambiguous("timeout"), Ambiguous("timeout"))
    with pytest.raises(Ambiguous):
        read(call, policies=POLICIES, budget_s=FAR, sleep=slept.append)
    # A read out of budget surfaces its failure: it has no queue to go back to.
    call, calls = scripted(RateLimited("429", retry_after_s=30.0))
    with pytest.raises(RateLimited):
        read(call, policies=POLICIES, budget_s=1.0, sleep=slept.append)


def test_reads_are_never_ambiguous_and_unknown_failures_are_unknown():
    assert retry_class_of(Ambiguous("t"), mutating=False) is RetryClass.TRANSIENT
    assert retry_class_of(Ambiguous("t"), mutating=True) is RetryClass.AMBIGUOUS
    assert retry_class_of(Unexpected("?"), mutating=True) is RetryClass.UNKNOWN
    assert retry_class_of(KeyError("?"), mutating=False) is RetryClass.UNKNOWN


def test_poll_asks_until_an_answer_comes():
    slept: list[float] = []
    probe, calls = scripted(None, None, "found")
    found = poll(
        probe,
        delays_s=lambda n: 0.5 * n,
        until=lambda: False,
        deadline=time.monotonic() + FAR,
        sleep=slept.append,
    )
    assert found == "found" and slept == [0.5, 1.0]


def test_poll_ends_with_nothing_once_the_answer_no_longer_matters():
    probe, calls = scripted(None, None, None, "too late")
    answers = iter([False, True])
    assert (
        poll(
            probe,
            delays_s=lambda n: 0.1,
            until=lambda: next(answers),
            deadline=time.monotonic() + FAR,
            sleep=lambda s: None,
        )
        is None
    )
    assert len(calls) == 2


def test_poll_requeues_when_the_answer_is_due_after_the_budget():
    probe, _ = scripted(None, "later")
    with pytest.raises(Requeue):
        poll(
            probe,
            delays_s=lambda n: 30.0,
            until=lambda: False,
            deadline=time.monotonic() + 1.0,
            sleep=lambda s: None,
        )
    probe, _ = scripted(None, "later")
    assert (
        poll(
            probe,
            delays_s=lambda n: 30.0,
            until=lambda: False,
            deadline=time.monotonic() + 1.0,
            requeue_past_deadline=False,
            sleep=lambda s: None,
        )
        is None
    )


def test_pause_sleeps_only_inside_the_deadline():
    slept: list[float] = []
    pause(0.2, deadline=time.monotonic() + 5, reason="wait", sleep=slept.append)
    assert slept == [0.2]
    with pytest.raises(Requeue):
        pause(10.0, deadline=time.monotonic() + 5, reason="wait", sleep=slept.append)


def test_a_grant_is_waited_for_within_the_maximum_only():
    slept: list[float] = []
    ask, calls = scripted(0.2, 0.3, 0.0)
    assert wait_for_grant(ask, max_wait_s=5.0, sleep=slept.append) == (True, 0.5)
    ask, calls = scripted(0.2, 9.0)
    assert wait_for_grant(ask, max_wait_s=5.0, sleep=slept.append) == (False, 9.0)


@settings(max_examples=50)
@given(
    failures=st.lists(
        st.sampled_from([NotSent, RateLimited, Ambiguous, Refused, Unexpected]), max_size=12
    ),
    deadline_s=st.floats(min_value=0, max_value=200),
)
def test_no_failure_that_may_have_executed_is_ever_retried_and_no_wait_passes_the_deadline(
    failures, deadline_s
):
    slept: list[float] = []
    call, calls = scripted(*(kind("x") for kind in failures), {"id": "ok"})
    started = time.monotonic()
    try:
        run_create(call, slept, deadline_s=deadline_s)
    except (Requeue, NotSent, Ambiguous, Refused, Unexpected):
        pass
    # Every call but the last followed a failure the executor may retry
    for kind in failures[: len(calls) - 1]:
        assert issubclass(kind, NotSent)
    assert sum(slept) <= deadline_s + (time.monotonic() - started)
