"""Retry classes: what a failed exchange call means, and how long to wait before the next try.

One boundary turns a ccxt exception into a :class:`RetryClass`, by type only
(never by message text), the most specific class in the exception's MRO
winning::

    BaseError ............................. unknown
    ├── ExchangeError ..................... unknown (the exchange said no, in a way ccxt did not map)
    │   ├── AuthenticationError, BadRequest, InvalidOrder, InsufficientFunds,
    │   │   OperationRejected, NotSupported, ... permanent (the same request gets the same answer)
    └── OperationFailed ................... ambiguous (the exchange failed while processing)
        ├── NetworkError .................. ambiguous, or transient when the request never left
        │   ├── RateLimitExceeded, DDoSProtection ... rate_limited (refused, not executed)
        │   ├── ExchangeNotAvailable ...... ambiguous (5xx), or transient when never sent
        │   │   └── OnMaintenance ......... transient (refused, not executed)
        │   ├── InvalidNonce .............. transient (refused for its timestamp, not executed)
        │   └── RequestTimeout ............ ambiguous, or transient on a connect timeout
        ├── BadResponse, NullResponse ..... ambiguous (an answer came back we could not read)
        └── CancelPending ................. transient (the cancel is under way; asking again is harmless)

*Ambiguous* means the request may have been executed. For a mutating call
(create, cancel) that is never followed by a blind resubmit: the caller looks
the order up by client order id first. For a read, repeating is harmless, so
ambiguous becomes transient.

Whether a request "never left" is read from the exception chain that ccxt's
sync ``Exchange.fetch`` builds (ccxt 4.5, requests 2.x, urllib3 2.x)::

    NetworkError <- requests.ConnectionError <- MaxRetryError <- NewConnectionError <- ConnectionRefusedError
    RequestTimeout <- requests.ConnectTimeout <- MaxRetryError <- ConnectTimeoutError
    RequestTimeout <- requests.ReadTimeout <- ReadTimeoutError <- TimeoutError      (sent: ambiguous)

The chain is walked from the ccxt exception downwards, explicit cause before
implicit context, and the *first* transport-level marker decides. Stopping at
the first marker matters: an unrelated exception that was being handled when
the call was made ends up deep in ``__context__``, and must not turn a read
timeout (the order may exist) into "never sent" (safe to resend).

Policies are small frozen objects built from tenacity parts, one per class,
with seed 000's numbers as defaults. Each horizon has one owner: tenacity
inside the task for seconds, the queue (``requeue``) for longer waits, the
recovery sweep for anything still in doubt.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Protocol

import requests.exceptions
import tenacity
import urllib3.exceptions
from ccxt.base import errors as ccxt_errors


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


_P = RetryClass.PERMANENT
_R = RetryClass.RATE_LIMITED
_T = RetryClass.TRANSIENT
_A = RetryClass.AMBIGUOUS
_U = RetryClass.UNKNOWN

#: Every exception class in ``ccxt.base.errors`` (ccxt 4.5.x), each decided explicitly.
#: ``tests/unit/test_retry.py`` fails when ccxt adds a class that is not listed here.
CCXT_ERROR_CLASSES: Mapping[type[ccxt_errors.BaseError], RetryClass] = MappingProxyType(
    {
        ccxt_errors.BaseError: _U,
        # The exchange answered with an error ccxt did not map more precisely
        # (also what ccxt raises for SSL errors and redirect loops).
        ccxt_errors.ExchangeError: _U,
        ccxt_errors.AuthenticationError: _P,
        ccxt_errors.PermissionDenied: _P,
        ccxt_errors.AccountNotEnabled: _P,
        ccxt_errors.AccountSuspended: _P,
        # Our own bug: the same call lacks the same argument next time.
        ccxt_errors.ArgumentsRequired: _P,
        ccxt_errors.BadRequest: _P,
        ccxt_errors.BadSymbol: _P,
        ccxt_errors.OperationRejected: _P,
        # Nothing to change (margin mode already set): retrying cannot help either.
        ccxt_errors.NoChange: _P,
        ccxt_errors.MarginModeAlreadySet: _P,
        ccxt_errors.MarketClosed: _P,
        ccxt_errors.ManualInteractionNeeded: _P,
        ccxt_errors.RestrictedLocation: _P,
        ccxt_errors.InsufficientFunds: _P,
        ccxt_errors.InvalidAddress: _P,
        ccxt_errors.AddressPending: _P,
        ccxt_errors.InvalidOrder: _P,
        # On a lookup, "not found" is an answer (visibility lag is handled by
        # ``lookup_delays``), not an error to retry blindly.
        ccxt_errors.OrderNotFound: _P,
        ccxt_errors.OrderNotCached: _P,
        ccxt_errors.OrderImmediatelyFillable: _P,
        ccxt_errors.OrderNotFillable: _P,
        # The client order id is taken, so an earlier attempt got through: the
        # caller resolves it by lookup, never by sending again.
        ccxt_errors.DuplicateOrderId: _P,
        ccxt_errors.ContractUnavailable: _P,
        ccxt_errors.NotSupported: _P,
        ccxt_errors.InvalidProxySettings: _P,
        ccxt_errors.ExchangeClosedByUser: _P,
        # Binance -1001 "internal error", -1008 "server busy": failed while processing.
        ccxt_errors.OperationFailed: _A,
        ccxt_errors.NetworkError: _A,
        ccxt_errors.DDoSProtection: _R,
        ccxt_errors.RateLimitExceeded: _R,
        # ccxt maps HTTP 5xx here: the server may have acted before failing.
        ccxt_errors.ExchangeNotAvailable: _A,
        # The exchange answered "maintenance": refused, not executed.
        ccxt_errors.OnMaintenance: _T,
        # Refused for its nonce/timestamp (Bybit 10002), so not executed; a new
        # request carries a new nonce.
        ccxt_errors.InvalidNonce: _T,
        ccxt_errors.ChecksumError: _T,
        ccxt_errors.RequestTimeout: _A,
        # Binance -1006/-1007 "execution status unknown" land here.
        ccxt_errors.BadResponse: _A,
        ccxt_errors.NullResponse: _A,
        ccxt_errors.CancelPending: _T,
        # WebSocket bookkeeping only; execq does not use ccxt.pro.
        ccxt_errors.UnsubscribeError: _U,
    }
)

#: Classes whose failed request is known not to have been executed: sending it
#: again cannot double an order.
SAFE_TO_RESEND = frozenset({RetryClass.TRANSIENT, RetryClass.RATE_LIMITED})

# A connection was never established: nothing reached the exchange.
_NOT_SENT = (
    requests.exceptions.ConnectTimeout,
    urllib3.exceptions.ConnectTimeoutError,  # includes NewConnectionError, NameResolutionError
    ConnectionRefusedError,
    socket.gaierror,
)
# Bytes were (or may have been) written before this failed.
_MAYBE_SENT = (
    requests.exceptions.ReadTimeout,
    requests.exceptions.HTTPError,
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.ProtocolError,
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    TimeoutError,
)
_MAX_CHAIN = 16


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes, one link at a time, explicit cause first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        if isinstance(current, urllib3.exceptions.MaxRetryError) and isinstance(
            reason, BaseException
        ):
            current = reason
        else:
            current = current.__cause__ or current.__context__


def never_sent(exc: BaseException) -> bool:
    """True when the exception chain proves the request did not reach the exchange."""
    for link in _chain(exc):
        if isinstance(link, _NOT_SENT):
            return True
        if isinstance(link, _MAYBE_SENT):
            return False
    return False


def _mapped_class(exc: BaseException) -> RetryClass:
    for klass in type(exc).__mro__:
        if klass in CCXT_ERROR_CLASSES:
            return CCXT_ERROR_CLASSES[klass]
    return RetryClass.UNKNOWN


def classify(exc: BaseException, *, mutating: bool) -> RetryClass:
    """The retry class of ``exc`` for a call that changes state (``mutating``) or only reads.

    Non-ccxt exceptions are ``UNKNOWN``. For reads, ``AMBIGUOUS`` becomes
    ``TRANSIENT`` because a repeated read is harmless. For mutating calls an
    ambiguous network failure becomes ``TRANSIENT`` only when the exception
    chain proves the request never left (connection refused, DNS failure,
    connect timeout).
    """
    if not isinstance(exc, ccxt_errors.BaseError):
        return RetryClass.UNKNOWN
    retry_class = _mapped_class(exc)
    if retry_class is not RetryClass.AMBIGUOUS:
        return retry_class
    if not mutating:
        return RetryClass.TRANSIENT
    if isinstance(exc, ccxt_errors.NetworkError) and never_sent(exc):
        return RetryClass.TRANSIENT
    return RetryClass.AMBIGUOUS


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

    def retry(self, *, mutating: bool) -> tenacity.retry_base:
        """Retry exactly the exceptions that :func:`classify` puts in this class.

        Never for an ambiguous mutating call: resending it could double the
        order. Its attempts and waits pace the *lookups* that resolve it.
        """
        if not self.retries or (mutating and self.retry_class is RetryClass.AMBIGUOUS):
            return tenacity.retry_never
        retry_class = self.retry_class
        return tenacity.retry_if_exception(
            lambda exc: classify(exc, mutating=mutating) is retry_class
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


@dataclass(frozen=True)
class RetryDecision:
    """What to do after a failed attempt.

    ``retry``: try again in this task after ``wait_s`` seconds.
    ``requeue``: the class is retryable and attempts remain, but the wait would
    cross the task's deadline: send the task back to the queue with a
    countdown of ``wait_s`` instead of sleeping in it.
    Neither: give up (permanent, or attempts exhausted).
    """

    retry: bool
    wait_s: float
    requeue: bool

    @property
    def give_up(self) -> bool:
        return not self.retry and not self.requeue


def should_retry(
    retry_class: RetryClass,
    attempt_number: int,
    policies: RetryPolicies,
    elapsed_s: float,
    deadline_s: float,
    *,
    min_wait_s: float = 0.0,
) -> RetryDecision:
    """Decide after failed attempt ``attempt_number`` (1-based, as tenacity counts).

    ``elapsed_s`` is the time spent in this task so far and ``deadline_s`` the
    time it may spend in all (keep it well inside the soft time limit).
    ``min_wait_s`` carries an exchange's Retry-After or the cluster cooldown.
    For ``AMBIGUOUS``, ``retry`` means "look the order up after ``wait_s``",
    never "send it again".
    The wait is :meth:`RetryPolicy.delay_for`'s upper bound, so a wait judged to
    fit the deadline fits it whatever jitter is drawn.
    """
    policy = policies.for_class(retry_class)
    if attempt_number >= policy.attempts:
        return RetryDecision(retry=False, wait_s=0.0, requeue=False)
    wait_s = max(policy.delay_for(attempt_number), min_wait_s)
    if elapsed_s + wait_s > deadline_s:
        return RetryDecision(retry=False, wait_s=wait_s, requeue=True)
    return RetryDecision(retry=True, wait_s=wait_s, requeue=False)


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
