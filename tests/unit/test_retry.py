"""Retry classes: ccxt exceptions map to the right class by type, policies wait as the
seed says, and nothing here sleeps."""

from __future__ import annotations

import inspect
import socket
from types import SimpleNamespace

import ccxt
import pytest
import requests
import requests.exceptions
import tenacity
import urllib3.exceptions
from ccxt.base import errors as ccxt_errors
from hypothesis import given
from hypothesis import strategies as st

from workers.exchange.transport import ExchangeSession
from workers.execution.retry import (
    CCXT_ERROR_CLASSES,
    SAFE_TO_RESEND,
    RetryClass,
    RetryPolicies,
    RetryPolicy,
    classify,
    lookup_delays,
    never_sent,
    should_retry,
)


def _all_ccxt_error_classes() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    pending = [ccxt_errors.BaseError]
    while pending:
        klass = pending.pop()
        if klass in found:
            continue
        if klass.__module__.startswith("ccxt"):
            found.add(klass)
        pending.extend(klass.__subclasses__())
    return found


ALL_CCXT_ERRORS = sorted(_all_ccxt_error_classes(), key=lambda klass: klass.__name__)


# --- the mapping covers ccxt --------------------------------------------------------


def test_every_ccxt_exception_class_is_mapped_explicitly():
    # Given every subclass of ccxt.BaseError that ccxt itself defines
    # When we look each one up in the mapping (not through the MRO)
    unmapped = [klass.__name__ for klass in ALL_CCXT_ERRORS if klass not in CCXT_ERROR_CLASSES]
    # Then none is missing: a ccxt upgrade that adds a class fails here first
    assert unmapped == [], f"decide a retry class for: {unmapped}"


def test_every_class_exported_by_ccxt_base_errors_is_mapped():
    exported = [
        getattr(ccxt_errors, name)
        for name in ccxt_errors.__all__
        if inspect.isclass(getattr(ccxt_errors, name))
    ]
    assert len(exported) >= 40
    assert [klass for klass in exported if klass not in CCXT_ERROR_CLASSES] == []


def test_the_mapping_lists_only_ccxt_exceptions():
    assert all(issubclass(klass, ccxt_errors.BaseError) for klass in CCXT_ERROR_CLASSES)


# --- classification by type ----------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        ccxt.InsufficientFunds,
        ccxt.InvalidOrder,
        ccxt.OrderNotFillable,
        ccxt.OrderNotFound,
        ccxt.DuplicateOrderId,
        ccxt.BadSymbol,
        ccxt.BadRequest,
        ccxt.AuthenticationError,
        ccxt.PermissionDenied,
        ccxt.AccountSuspended,
        ccxt.MarketClosed,
        ccxt.NotSupported,
        ccxt.ArgumentsRequired,
    ],
)
@pytest.mark.parametrize("mutating", [True, False])
def test_definitive_rejections_are_permanent(error, mutating):
    # Given an exchange answer that will be the same next time
    # Then it is never retried, for orders and reads alike
    assert classify(error("binanceusdm nope"), mutating=mutating) is RetryClass.PERMANENT


@pytest.mark.parametrize("error", [ccxt.RateLimitExceeded, ccxt.DDoSProtection])
@pytest.mark.parametrize("mutating", [True, False])
def test_rate_limits_are_rate_limited(error, mutating):
    assert classify(error("429"), mutating=mutating) is RetryClass.RATE_LIMITED


@pytest.mark.parametrize(
    "error",
    [
        ccxt.RequestTimeout,
        ccxt.NetworkError,
        ccxt.ExchangeNotAvailable,
        ccxt.BadResponse,
        ccxt.NullResponse,
        ccxt.OperationFailed,
    ],
)
def test_a_create_that_may_have_executed_is_ambiguous(error):
    # Given a failure after which the order may exist on the exchange
    # When the call was a create (mutating)
    # Then it is ambiguous: the caller must look the order up, not resend
    assert classify(error("boom"), mutating=True) is RetryClass.AMBIGUOUS


@pytest.mark.parametrize(
    "error", [ccxt.RequestTimeout, ccxt.NetworkError, ccxt.ExchangeNotAvailable, ccxt.BadResponse]
)
def test_the_same_failure_on_a_read_is_transient(error):
    assert classify(error("boom"), mutating=False) is RetryClass.TRANSIENT


@pytest.mark.parametrize("error", [ccxt.InvalidNonce, ccxt.OnMaintenance, ccxt.CancelPending])
def test_refused_before_execution_is_transient_even_for_a_create(error):
    assert classify(error("try later"), mutating=True) is RetryClass.TRANSIENT


def test_unmapped_exchange_errors_are_unknown():
    assert classify(ccxt.ExchangeError("binanceusdm -9999"), mutating=True) is RetryClass.UNKNOWN
    assert classify(ccxt.BaseError("?"), mutating=False) is RetryClass.UNKNOWN


@pytest.mark.parametrize(
    "exc",
    [ValueError("x"), KeyError("y"), requests.exceptions.ConnectionError("raw"), TimeoutError()],
)
def test_exceptions_from_outside_ccxt_are_unknown(exc):
    assert classify(exc, mutating=True) is RetryClass.UNKNOWN
    assert classify(exc, mutating=False) is RetryClass.UNKNOWN


def test_the_most_specific_mapped_class_in_the_mro_wins():
    # Given exchange-specific subclasses that ccxt does not list
    class VenueMarginError(ccxt.InsufficientFunds):
        pass

    class VenueGlitch(ccxt.RequestTimeout):
        pass

    # Then each inherits the class of its nearest mapped ancestor
    assert classify(VenueMarginError(), mutating=True) is RetryClass.PERMANENT
    assert classify(VenueGlitch(), mutating=True) is RetryClass.AMBIGUOUS
    assert classify(VenueGlitch(), mutating=False) is RetryClass.TRANSIENT


def test_the_message_text_never_matters():
    # Given a rate-limit-sounding message on a permanent error (the seed's string matching bug)
    exc = ccxt.InsufficientFunds("rate limit exceeded, network timeout, try again")
    # Then the type decides
    assert classify(exc, mutating=True) is RetryClass.PERMANENT


@given(klass=st.sampled_from(ALL_CCXT_ERRORS), mutating=st.booleans())
def test_classification_is_total_and_reads_are_never_ambiguous(klass, mutating):
    retry_class = classify(klass("message"), mutating=mutating)
    assert retry_class in RetryClass
    if not mutating:
        assert retry_class is not RetryClass.AMBIGUOUS


@given(klass=st.sampled_from(ALL_CCXT_ERRORS))
def test_a_create_is_never_classed_safer_than_a_read(klass):
    # Whatever a read is, a mutating call is either the same or ambiguous.
    on_read = classify(klass("m"), mutating=False)
    on_create = classify(klass("m"), mutating=True)
    assert on_create is on_read or on_create is RetryClass.AMBIGUOUS


# --- "did the request leave?" from the exception chain ------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ccxt's own session, and the one execq's gateway gives every client.
SESSIONS = [requests.Session, ExchangeSession]


def _offline_client(
    timeout_ms: int = 500, session: type[requests.Session] = requests.Session
) -> ccxt.Exchange:
    client = ccxt.binanceusdm({"timeout": timeout_ms})
    client.session = session()
    client.session.trust_env = False  # no proxy between us and 127.0.0.1
    return client


@pytest.mark.parametrize("session", SESSIONS)
def test_connection_refused_through_real_ccxt_is_transient_for_a_create(session):
    # Given ccxt's real sync fetch against a port where nothing listens
    with pytest.raises(ccxt.NetworkError) as caught:
        _offline_client(session=session).fetch(
            f"http://127.0.0.1:{_closed_port()}/fapi/v1/order", "POST"
        )
    # Then the chain shows the request never left, so resending cannot double an order
    assert never_sent(caught.value)
    assert classify(caught.value, mutating=True) is RetryClass.TRANSIENT


@pytest.mark.parametrize("session", SESSIONS)
def test_read_timeout_through_real_ccxt_is_ambiguous_for_a_create(session):
    # Given a server that accepts the connection and the request but never answers
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(ccxt.RequestTimeout) as caught:
            _offline_client(timeout_ms=150, session=session).fetch(
                f"http://127.0.0.1:{port}/fapi/v1/order", "POST", body="a=1"
            )
    # Then the order may exist: ambiguous, never "not sent"
    assert not never_sent(caught.value)
    assert classify(caught.value, mutating=True) is RetryClass.AMBIGUOUS
    assert classify(caught.value, mutating=False) is RetryClass.TRANSIENT


def _raise_like_requests(inner: BaseException, outer: type[requests.exceptions.RequestException]):
    """Reproduce requests' adapter: MaxRetryError from the urllib3 reason, re-raised as ``outer``."""
    try:
        try:
            raise urllib3.exceptions.MaxRetryError(None, "/fapi/v1/order", inner) from inner
        except urllib3.exceptions.MaxRetryError as retry_error:
            raise outer(retry_error) from None
    except requests.exceptions.RequestException as request_error:
        return request_error


def _ccxt_wrap(ccxt_class: type[ccxt.BaseError], cause: BaseException) -> ccxt.BaseError:
    try:
        raise ccxt_class("binanceusdm POST https://fapi.binance.com/fapi/v1/order") from cause
    except ccxt.BaseError as exc:
        return exc


def test_dns_failure_is_transient_for_a_create():
    reason = urllib3.exceptions.NameResolutionError("fapi.binance.com", None, socket.gaierror())
    exc = _ccxt_wrap(
        ccxt.NetworkError, _raise_like_requests(reason, requests.exceptions.ConnectionError)
    )
    assert classify(exc, mutating=True) is RetryClass.TRANSIENT


def test_connect_timeout_is_transient_for_a_create():
    reason = urllib3.exceptions.ConnectTimeoutError(None, "connect timed out")
    exc = _ccxt_wrap(
        ccxt.RequestTimeout, _raise_like_requests(reason, requests.exceptions.ConnectTimeout)
    )
    assert classify(exc, mutating=True) is RetryClass.TRANSIENT


def test_connection_reset_after_send_stays_ambiguous():
    reason = urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104))
    exc = _ccxt_wrap(
        ccxt.NetworkError, _raise_like_requests(reason, requests.exceptions.ConnectionError)
    )
    assert classify(exc, mutating=True) is RetryClass.AMBIGUOUS


def test_an_unrelated_exception_being_handled_does_not_make_a_timeout_safe():
    # Given a create that timed out on read while the caller was handling a refused connection
    try:
        raise ConnectionRefusedError("an earlier, unrelated call")
    except ConnectionRefusedError:
        read_timeout = _raise_like_requests(
            urllib3.exceptions.ReadTimeoutError(None, "/fapi/v1/order", "read timed out"),
            requests.exceptions.ReadTimeout,
        )
        exc = _ccxt_wrap(ccxt.RequestTimeout, read_timeout)
    # Then the first transport marker (the read timeout) decides: the order may exist
    assert classify(exc, mutating=True) is RetryClass.AMBIGUOUS


def test_an_http_5xx_response_stays_ambiguous():
    exc = _ccxt_wrap(ccxt.ExchangeNotAvailable, requests.exceptions.HTTPError("502 Bad Gateway"))
    assert classify(exc, mutating=True) is RetryClass.AMBIGUOUS


def test_only_transient_and_rate_limited_are_safe_to_resend():
    assert SAFE_TO_RESEND == {RetryClass.TRANSIENT, RetryClass.RATE_LIMITED}


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


def test_a_policy_retries_only_its_own_class():
    policy = RetryPolicies.default().transient
    retry_on_create = policy.retry(mutating=True)
    retry_on_read = policy.retry(mutating=False)
    assert retry_on_read.predicate(ccxt.RequestTimeout("t"))
    assert not retry_on_create.predicate(ccxt.RequestTimeout("t"))  # ambiguous on a create
    assert not retry_on_create.predicate(ccxt.InsufficientFunds("no"))


def test_the_ambiguous_policy_never_resends_a_create():
    policy = RetryPolicies.default().ambiguous
    assert policy.retry(mutating=True) is tenacity.retry_never
    calls, slept, result = _run(policy, [ccxt.RequestTimeout("t"), {"id": "dup"}], mutating=True)
    assert (calls, slept) == (1, [])


# --- tenacity end to end, with a recorded sleep instead of a real one ---------------------


def _run(policy: RetryPolicy, outcomes: list, *, mutating: bool) -> tuple[int, list[float], object]:
    calls: list[int] = []
    slept: list[float] = []

    def call():
        calls.append(1)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    retrying = tenacity.Retrying(
        stop=policy.stop(),
        wait=policy.wait(),
        retry=policy.retry(mutating=mutating),
        sleep=slept.append,
        reraise=True,
    )
    try:
        result: object = retrying(call)
    except Exception as exc:  # noqa: BLE001 - the test reports whatever ended the run
        result = exc
    return len(calls), slept, result


def test_a_transient_failure_then_success_takes_two_calls():
    refused = _ccxt_wrap(
        ccxt.NetworkError,
        _raise_like_requests(
            urllib3.exceptions.NewConnectionError(None, "refused"),
            requests.exceptions.ConnectionError,
        ),
    )
    calls, slept, result = _run(
        RetryPolicies.default().transient, [refused, {"id": "1"}], mutating=True
    )
    assert (calls, result) == (2, {"id": "1"})
    assert len(slept) == 1 and 1.0 <= slept[0] <= 2.0


def test_insufficient_margin_is_tried_once():
    exc = ccxt.InsufficientFunds("margin is insufficient")
    calls, slept, result = _run(
        RetryPolicies.default().transient, [exc, {"id": "never"}], mutating=True
    )
    assert (calls, slept, result) == (1, [], exc)


def test_rate_limited_gives_up_after_five_tries():
    exc = ccxt.RateLimitExceeded("429")
    calls, slept, result = _run(RetryPolicies.default().rate_limited, [exc] * 10, mutating=True)
    assert calls == 5 and len(slept) == 4 and result is exc
    assert sum(slept) <= RetryPolicies.default().rate_limited.total_wait_s()


# --- should_retry ------------------------------------------------------------------------


def test_retry_in_task_while_the_wait_fits_the_deadline():
    decision = should_retry(RetryClass.TRANSIENT, 1, RetryPolicies.default(), 0.0, 30.0)
    assert decision.retry and not decision.requeue
    assert decision.wait_s == RetryPolicies.default().transient.delay_for(1)


def test_a_wait_that_would_cross_the_deadline_goes_back_to_the_queue():
    # Given a rate-limited create that has already used most of the task's time
    decision = should_retry(RetryClass.RATE_LIMITED, 3, RetryPolicies.default(), 40.0, 45.0)
    # Then it is requeued with the wait as countdown instead of sleeping past the soft limit
    assert decision.requeue and not decision.retry
    assert decision.wait_s == 10.0


def test_permanent_failures_give_up_at_once():
    decision = should_retry(RetryClass.PERMANENT, 1, RetryPolicies.default(), 0.0, 60.0)
    assert decision.give_up


def test_exhausted_attempts_give_up_even_with_time_left():
    decision = should_retry(RetryClass.UNKNOWN, 2, RetryPolicies.default(), 0.0, 600.0)
    assert decision.give_up


def test_retry_after_from_the_exchange_lengthens_the_wait():
    decision = should_retry(
        RetryClass.RATE_LIMITED, 1, RetryPolicies.default(), 0.0, 60.0, min_wait_s=12.0
    )
    assert decision.retry and decision.wait_s == 12.0


@given(
    retry_class=st.sampled_from(list(RetryClass)),
    attempt=st.integers(min_value=1, max_value=10),
    elapsed=st.floats(min_value=0, max_value=100),
    deadline=st.floats(min_value=0, max_value=100),
)
def test_should_retry_never_sleeps_past_the_deadline_nor_beyond_the_attempts(
    retry_class, attempt, elapsed, deadline
):
    policies = RetryPolicies.default()
    decision = should_retry(retry_class, attempt, policies, elapsed, deadline)
    assert not (decision.retry and decision.requeue)
    if decision.retry:
        assert elapsed + decision.wait_s <= deadline
    if decision.retry or decision.requeue:
        assert attempt < policies.for_class(retry_class).attempts
        assert retry_class is not RetryClass.PERMANENT


# --- lookup delays -------------------------------------------------------------------------


def test_lookup_delays_follow_seed_003():
    assert lookup_delays(5, 0.5, 1.5) == [0.5, 0.75, 1.125, 1.6875, 2.53125]


def test_lookup_delays_edge_cases():
    assert lookup_delays(0, 0.5, 1.5) == []
    with pytest.raises(ValueError):
        lookup_delays(3, 0.5, 0.9)
