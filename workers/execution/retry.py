"""Retry classes: how long to wait before the next try of a failed exchange call.

What a failure *means* is decided where exchange failures enter execq: each venue
translates ccxt's exceptions into execq's error tree (``workers.exchange.errors``),
and every error class carries its retry class:

| retry class | errors | policy (seed 000) |
|---|---|---|
| permanent | ``Refused``, ``AccountRefused``, ``DuplicateClientId``, ``OrderNotFound`` | never retried |
| rate_limited | ``RateLimited``, ``Throttled`` | 5 tries, 2 s -> 60 s; every worker backs off |
| transient | ``NotSent``, ``StaleRequest`` (did not execute) | 3 tries, 1 s -> 10 s |
| ambiguous | ``Ambiguous`` (may have executed) | a create is looked up, not resent, unless a resend cannot double it; reads retry as transient |
| unknown | ``Unexpected`` | 2 tries, 0.5 s -> 5 s |

Policies are small frozen objects built from tenacity parts, one per class, with
seed 000's numbers as defaults; the one executor that runs them is
``workers.retrying``. Each horizon has one owner: tenacity inside the task for
seconds, the queue for longer waits, the sweeps for anything still in doubt.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import tenacity


class RetryClass(StrEnum):
    """What a failure means for the next attempt."""

    #: The same request will get the same answer: do not retry; the order is rejected.
    PERMANENT = "permanent"
    #: Refused for rate, not executed: back off, and make every worker back off.
    RATE_LIMITED = "rate_limited"
    #: Not executed (never sent, or refused before execution): safe to send again.
    TRANSIENT = "transient"
    #: May have been executed: look the order up before deciding anything.
    AMBIGUOUS = "ambiguous"
    #: Unmapped: a couple of careful retries, then give up.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, to retry one class of failure.

    ``attempts`` counts every try including the first (1 = no retry).
    The wait after failed attempt *n* is ``base_s * 2**(n-1)`` plus up to
    ``jitter_s`` of random jitter, capped at ``cap_s`` (seconds).
    """

    retry_class: RetryClass
    attempts: int
    base_s: float
    cap_s: float

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError("base_s and cap_s must not be negative")

    @property
    def jitter_s(self) -> float:
        """Random spread added to each wait (seconds).

        Proportional to ``base_s`` rather than tenacity's fixed 1 s, so that
        compressed test settings (0.1 s bases) stay compressed, while workers
        that failed together still spread out.
        """
        return self.base_s

    @property
    def retries(self) -> bool:
        return self.attempts > 1

    def stop(self) -> tenacity.stop.stop_base:
        return tenacity.stop_after_attempt(self.attempts)

    def wait(self) -> tenacity.wait.wait_base:
        return tenacity.wait_exponential_jitter(
            multiplier=self.base_s, max=self.cap_s, exp_base=2, jitter=self.jitter_s
        )

    def delay_for(self, attempt_number: int) -> float:
        """The longest wait ``wait()`` can return after failed attempt ``attempt_number``.

        Deterministic (no randomness), so deadlines can be reasoned about:
        a wait that fits this bound fits whatever jitter tenacity draws.
        """
        if attempt_number < 1:
            raise ValueError(f"attempt_number starts at 1, got {attempt_number}")
        try:
            exponential = self.base_s * 2 ** (attempt_number - 1)
        except OverflowError:
            return self.cap_s
        return min(exponential + self.jitter_s, self.cap_s)

    def total_wait_s(self) -> float:
        """Upper bound of all waits if every attempt fails (seconds)."""
        return sum(self.delay_for(n) for n in range(1, self.attempts))


class _ClassSettings(Protocol):
    attempts: int
    base_s: float
    cap_s: float


class _RetrySettings(Protocol):
    rate_limited: _ClassSettings
    transient: _ClassSettings
    unknown: _ClassSettings


# Ambiguous outcomes are resolved by lookups, each of which may itself hit the
# same flaky network: three rounds with transient's pacing.
_AMBIGUOUS_ATTEMPTS = 3


@dataclass(frozen=True)
class RetryPolicies:
    """One :class:`RetryPolicy` per :class:`RetryClass`."""

    permanent: RetryPolicy
    rate_limited: RetryPolicy
    transient: RetryPolicy
    ambiguous: RetryPolicy
    unknown: RetryPolicy

    @classmethod
    def from_settings(cls, retry_settings: Any) -> RetryPolicies:
        """Build from an object with ``.rate_limited/.transient/.unknown``, each having
        ``.attempts/.base_s/.cap_s`` (``workers.settings.RetrySettings``; duck-typed so
        this module never imports settings)."""

        def policy(retry_class: RetryClass, source: _ClassSettings, attempts: int | None = None):
            return RetryPolicy(
                retry_class,
                attempts if attempts is not None else int(source.attempts),
                float(source.base_s),
                float(source.cap_s),
            )

        transient = retry_settings.transient
        return cls(
            permanent=RetryPolicy(RetryClass.PERMANENT, 1, 0.0, 0.0),
            rate_limited=policy(RetryClass.RATE_LIMITED, retry_settings.rate_limited),
            transient=policy(RetryClass.TRANSIENT, transient),
            ambiguous=policy(RetryClass.AMBIGUOUS, transient, _AMBIGUOUS_ATTEMPTS),
            unknown=policy(RetryClass.UNKNOWN, retry_settings.unknown),
        )

    @classmethod
    def default(cls) -> RetryPolicies:
        """Seed 000's numbers: rate limit 5 tries 2 s -> 60 s; network 3 tries 1 s -> 10 s;
        unknown 2 tries 0.5 s -> 5 s; permanent errors are never retried."""
        return cls(
            permanent=RetryPolicy(RetryClass.PERMANENT, 1, 0.0, 0.0),
            rate_limited=RetryPolicy(RetryClass.RATE_LIMITED, 5, 2.0, 60.0),
            transient=RetryPolicy(RetryClass.TRANSIENT, 3, 1.0, 10.0),
            ambiguous=RetryPolicy(RetryClass.AMBIGUOUS, _AMBIGUOUS_ATTEMPTS, 1.0, 10.0),
            unknown=RetryPolicy(RetryClass.UNKNOWN, 2, 0.5, 5.0),
        )

    def for_class(self, retry_class: RetryClass) -> RetryPolicy:
        return getattr(self, RetryClass(retry_class).value)


def lookup_delays(attempts: int, base_s: float, factor: float) -> list[float]:
    """Waits before each order lookup after an ambiguous create (seconds).

    Seed 003: Bybit's ``fetch_order`` returned nothing 0.5 s after the create;
    waiting 0.5 s x 1.5^n over 5 tries (0.5, 0.75, 1.125, 1.69, 2.53: 6.6 s in
    all) outlasts the visibility lag. Delay *i* is slept before lookup *i*.
    """
    if attempts < 0:
        raise ValueError(f"attempts must not be negative, got {attempts}")
    if base_s < 0 or factor < 1:
        raise ValueError("base_s must be >= 0 and factor >= 1")
    return [base_s * factor**n for n in range(attempts)]
