"""The one retry executor: every wait and retry of an exchange call in a worker runs here.

Built from tenacity's parts and the retry-class policies of
``workers.execution.retry`` (seed 000's numbers by default, jitter included):

- ``call_with_retries`` retries a call whose failure a predicate allows
  (reads: anything that may pass; creates: only failures that did not
  execute), each retry class counting its own attempts and waiting its own
  exponential backoff (or longer, when the exchange sent a Retry-After);
- ``poll`` asks until an answer comes (an order lookup over the visibility
  window) or a moment passes;
- ``pause`` waits once.

All three are **deadline-aware**: a wait that would end after the run's
deadline raises :class:`Requeue` instead of sleeping, so the task goes back to
the queue and a worker thread is never held past its budget. Each horizon has
one owner: tenacity inside a run (seconds), the queue for longer waits, the
sweeps for anything still in doubt.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import tenacity

from workers.exchange.errors import RateLimited, Throttled, VenueError
from workers.execution.retry import RetryClass, RetryPolicies

T = TypeVar("T")

Sleep = Callable[[float], None]


class Requeue(Exception):
    """Come back later: the wait is longer than this run may spend (a control flow, not a
    failure). ``countdown_s`` is when to come back."""

    def __init__(self, countdown_s: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown_s = countdown_s
        self.reason = reason


def retry_class_of(exc: BaseException, *, mutating: bool) -> RetryClass:
    """The retry class of a failure: a read's ambiguous failure is transient (asking again
    is harmless); anything that is not a ``VenueError`` is unknown."""
    if not isinstance(exc, VenueError):
        return RetryClass.UNKNOWN
    if not mutating and exc.retry_class is RetryClass.AMBIGUOUS:
        return RetryClass.TRANSIENT
    return exc.retry_class


def minimum_wait_s(exc: BaseException) -> float:
    """What the failure itself says about waiting: the exchange's Retry-After, or the
    shared limiter's next slot."""
    if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
        return exc.retry_after_s
    if isinstance(exc, Throttled):
        return exc.wait_s
    return 0.0


def _state_at(attempt_number: int) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt_number
    return state


class _PerClassAttempts:
    """tenacity ``wait`` and ``stop`` for one call: each retry class counts its own attempts
    and waits its own backoff; a wait past ``deadline`` (monotonic) stops with a requeue."""

    def __init__(self, policies: RetryPolicies, deadline: float, *, mutating: bool) -> None:
        self.policies = policies
        self.deadline = deadline
        self.mutating = mutating
        self.attempts: Counter[RetryClass] = Counter()
        self.past_deadline = False

    def _failure(self, state: tenacity.RetryCallState) -> tuple[BaseException, RetryClass]:
        assert state.outcome is not None
        exc = state.outcome.exception()
        assert exc is not None
        return exc, retry_class_of(exc, mutating=self.mutating)

    def wait(self, state: tenacity.RetryCallState) -> float:
        exc, retry_class = self._failure(state)
        self.attempts[retry_class] += 1
        policy = self.policies.for_class(retry_class)
        backoff = policy.wait()(_state_at(self.attempts[retry_class]))
        return max(backoff, minimum_wait_s(exc))

    def stop(self, state: tenacity.RetryCallState) -> bool:
        _, retry_class = self._failure(state)
        if self.attempts[retry_class] >= self.policies.for_class(retry_class).attempts:
            return True
        self.past_deadline = time.monotonic() + state.upcoming_sleep > self.deadline
        return self.past_deadline


def call_with_retries(
    call: Callable[[], T],
    *,
    policies: RetryPolicies,
    deadline: float,
    retry_if: Callable[[BaseException], bool],
    mutating: bool,
    before_sleep: Callable[[BaseException, float], None] | None = None,
    requeue_past_deadline: bool = True,
    sleep: Sleep = time.sleep,
) -> T:
    """``call()`` until it succeeds, fails in a way ``retry_if`` refuses, or its class runs
    out of attempts (that failure is raised). Raises :class:`Requeue` when the next wait
    would end past ``deadline`` (``time.monotonic()``), or with ``requeue_past_deadline``
    false the last failure; ``before_sleep(failure, wait_s)`` runs before each wait (it
    records the attempt, sets a cooldown, ...)."""
    # Most calls succeed at once: the retry loop is built only after a first failure
    # (it costs about as much CPU as a Redis round trip, on every call of the order path).
    try:
        return call()
    except Exception as exc:
        if not retry_if(exc):
            raise
        first_failure: list[Exception] = [exc]

    def replayed() -> T:
        if first_failure:
            raise first_failure.pop()
        return call()

    attempts = _PerClassAttempts(policies, deadline, mutating=mutating)

    def give_up(state: tenacity.RetryCallState) -> T:
        exc, _ = attempts._failure(state)
        if attempts.past_deadline and requeue_past_deadline:
            raise Requeue(state.upcoming_sleep, f"{exc}; next try after this run's budget")
        raise exc

    def notify(state: tenacity.RetryCallState) -> None:
        if before_sleep is not None:
            exc, _ = attempts._failure(state)
            before_sleep(exc, state.upcoming_sleep)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry_if),
        wait=attempts.wait,
        stop=attempts.stop,
        before_sleep=notify,
        retry_error_callback=give_up,
        sleep=sleep,
    )
    return retrying(replayed)


def read_retry_if(exc: BaseException) -> bool:
    """Reads are retried for anything that may pass: not for definitive answers."""
    return retry_class_of(exc, mutating=False) is not RetryClass.PERMANENT


def read(
    call: Callable[[], T],
    *,
    policies: RetryPolicies,
    budget_s: float,
    sleep: Sleep = time.sleep,
) -> T:
    """A read (markets, tickers, positions, a lookup), retried by class within ``budget_s``;
    the last failure surfaces when the budget or the attempts run out (a read has no
    queue to go back to: its caller decides what the failure means)."""
    return call_with_retries(
        call,
        policies=policies,
        deadline=time.monotonic() + budget_s,
        retry_if=read_retry_if,
        mutating=False,
        requeue_past_deadline=False,
        sleep=sleep,
    )


def poll(
    probe: Callable[[], T | None],
    *,
    delays_s: Callable[[int], float],
    until: Callable[[], bool],
    deadline: float,
    requeue_past_deadline: bool = True,
    sleep: Sleep = time.sleep,
) -> T | None:
    """``probe()`` until it returns something, or ``until()`` says the answer no longer
    changes anything (then None). ``delays_s(n)`` is the wait after probe ``n``; a wait
    that would end past ``deadline`` raises :class:`Requeue`, or with
    ``requeue_past_deadline`` false ends the poll (None)."""

    def wait(state: tenacity.RetryCallState) -> float:
        return delays_s(state.attempt_number)

    def stop(state: tenacity.RetryCallState) -> bool:
        if until():
            return True
        if time.monotonic() + state.upcoming_sleep > deadline:
            if requeue_past_deadline:
                raise Requeue(state.upcoming_sleep, "the answer is due after this run's budget")
            return True
        return False

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda seen: seen is None),
        wait=wait,
        stop=stop,
        retry_error_callback=lambda state: None,
        sleep=sleep,
    )
    return retrying(probe)


def pause(seconds: float, *, deadline: float, reason: str, sleep: Sleep = time.sleep) -> None:
    """Wait ``seconds``, or raise :class:`Requeue` when that would end past ``deadline``."""
    if time.monotonic() + seconds > deadline:
        raise Requeue(seconds, reason)
    sleep(seconds)


def wait_for_grant(
    ask: Callable[[], float], *, max_wait_s: float, sleep: Sleep = time.sleep
) -> tuple[bool, float]:
    """Ask until granted: ``ask()`` answers 0 when granted, else the seconds until it may be.

    Returns ``(True, seconds waited)``, or ``(False, seconds until the next grant)`` when
    waiting for it would pass ``max_wait_s`` (that last wait is not slept).
    """
    first = ask()
    if first <= 0:
        return True, 0.0
    answers = [first]
    waited = 0.0

    def asked() -> float:
        return answers.pop() if answers else ask()

    def wait(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        return float(state.outcome.result())

    def stop(state: tenacity.RetryCallState) -> bool:
        return waited + state.upcoming_sleep > max_wait_s

    def note(state: tenacity.RetryCallState) -> None:
        nonlocal waited
        waited += state.upcoming_sleep

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda wait_s: wait_s > 0),
        wait=wait,
        stop=stop,
        before_sleep=note,
        retry_error_callback=lambda state: -state.upcoming_sleep,
        sleep=sleep,
    )
    outcome = retrying(asked)
    if outcome < 0:
        return False, -outcome
    return True, waited
