"""The one error boundary: each venue translates ccxt's exceptions into execq's error tree,
by type first, then by the exchange's own code, then by whether the request left."""

from __future__ import annotations

import inspect
import socket

import ccxt
import pytest
import requests
import requests.exceptions
import urllib3.exceptions
from ccxt.base import errors as ccxt_errors
from hypothesis import given
from hypothesis import strategies as st

from workers.exchange.errors import (
    AccountRefused,
    DuplicateClientId,
    OrderNotFound,
    RateLimited,
    Refused,
    StaleRequest,
    VenueError,
)
from workers.exchange.transport import ExchangeSession
from workers.exchange.venues import VENUES
from workers.exchange.venues.base import CCXT_ERROR_KINDS, never_sent
from workers.exchange.venues.binance import BinanceUsdm
from workers.exchange.venues.bybit import Bybit
from workers.execution.retry import RetryClass
from workers.retrying import retry_class_of


def _venue(kind: type = BinanceUsdm, answer: dict | None = None):
    """A venue whose client is offline; ``answer`` is the exchange's last JSON answer."""
    client = ccxt.binanceusdm() if kind is BinanceUsdm else ccxt.bybit()
    client.last_json_response = answer
    return kind("acct", lambda name: client)


def translated(exc: BaseException, *, kind: type = BinanceUsdm, answer: dict | None = None):
    return _venue(kind, answer).translate(exc, "create_order")


def classify(exc: BaseException, *, mutating: bool) -> RetryClass:
    """The retry class of a ccxt failure as a create (mutating) or a read sees it."""
    return retry_class_of(translated(exc), mutating=mutating)


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
    unmapped = [klass.__name__ for klass in ALL_CCXT_ERRORS if klass not in CCXT_ERROR_KINDS]
    # Then none is missing: a ccxt upgrade that adds a class fails here first
    assert unmapped == [], f"decide a retry class for: {unmapped}"


def test_every_class_exported_by_ccxt_base_errors_is_mapped():
    exported = [
        getattr(ccxt_errors, name)
        for name in ccxt_errors.__all__
        if inspect.isclass(getattr(ccxt_errors, name))
    ]
    assert len(exported) >= 40
    assert [klass for klass in exported if klass not in CCXT_ERROR_KINDS] == []


def test_the_mapping_lists_only_ccxt_exceptions():
    assert all(issubclass(klass, ccxt_errors.BaseError) for klass in CCXT_ERROR_KINDS)


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


def test_exceptions_from_outside_ccxt_are_unknown_to_a_retry_policy():
    for exc in (ValueError("x"), KeyError("y"), TimeoutError()):
        assert retry_class_of(exc, mutating=True) is RetryClass.UNKNOWN


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


# --- the exchange's own codes refine ccxt's classes ------------------------------------


@pytest.mark.parametrize(
    ("kind", "answer", "ccxt_class", "expected"),
    [
        (
            BinanceUsdm,
            {"code": -4116, "msg": "ClientOrderId is duplicated."},
            ccxt.InvalidOrder,
            DuplicateClientId,
        ),
        (
            Bybit,
            {"retCode": 110072, "retMsg": "OrderLinkedID is duplicate"},
            ccxt.InvalidOrder,
            DuplicateClientId,
        ),
        (
            BinanceUsdm,
            {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."},
            ccxt.BadRequest,
            StaleRequest,
        ),
        (
            Bybit,
            {
                "retCode": 10002,
                "retMsg": "invalid request, please check your server timestamp or recv_window param",
            },
            ccxt.InvalidNonce,
            StaleRequest,
        ),
        (
            BinanceUsdm,
            {"code": -2011, "msg": "Unknown order sent."},
            ccxt.OperationRejected,
            OrderNotFound,
        ),
        (
            Bybit,
            {"retCode": 110001, "retMsg": "Order does not exist"},
            ccxt.OrderNotFound,
            OrderNotFound,
        ),
        (
            BinanceUsdm,
            {"code": -2019, "msg": "Margin is insufficient."},
            ccxt.InsufficientFunds,
            Refused,
        ),
        (
            BinanceUsdm,
            {"code": -2014, "msg": "API-key format invalid."},
            ccxt.AuthenticationError,
            AccountRefused,
        ),
    ],
)
def test_an_exchange_code_says_more_than_cxxts_class(kind, answer, ccxt_class, expected):
    # Given the exchange's answer that ccxt raised as a coarse class
    error = translated(ccxt_class(f"{kind.ccxt_class} {answer}"), kind=kind, answer=answer)
    # Then the venue's translation names what the order lifecycle needs
    assert type(error) is expected
    assert error.code == str(answer.get("code", answer.get("retCode")))
    assert error.venue == kind.exchange and error.operation == "create_order"


def test_a_duplicate_client_id_is_never_a_plain_rejection():
    # A resend refused as a duplicate proves the order exists: never "rejected".
    answer = {"retCode": 110072, "retMsg": "OrderLinkedID is duplicate"}
    error = translated(ccxt.InvalidOrder(f"bybit {answer}"), kind=Bybit, answer=answer)
    assert not isinstance(error, Refused)


def test_an_earlier_answer_never_lends_its_code_to_an_error_raised_before_sending():
    # Given a client whose last answer was a duplicate-id refusal, and then an error ccxt
    # raises on its own, before any request (its message carries no answer)
    earlier = {"retCode": 110072, "retMsg": "OrderLinkedID is duplicate"}
    error = translated(
        ccxt.InvalidOrder("bybit amount must be greater than minimum"),
        kind=Bybit,
        answer=earlier,
    )
    # Then it is what ccxt says, not a duplicate
    assert type(error) is Refused and error.code is None


def test_a_rate_limit_carries_the_exchanges_retry_after():
    venue = _venue()
    venue.client.last_response_headers = {"Retry-After": "7"}
    error = venue.translate(ccxt.DDoSProtection("429"), "create_order")
    assert isinstance(error, RateLimited) and error.retry_after_s == 7.0


def test_every_venue_maps_its_operations_to_names_not_paths():
    for venue in VENUES.values():
        names = {operation for operation, _ in venue.operations.values()}
        assert "create_order" in names and "fetch_order" in names
        assert all("/" not in name for name in names)
        assert venue.operation_of("GET", "https://x.example/not/an/endpoint") == ("other", 1)


@given(klass=st.sampled_from(ALL_CCXT_ERRORS))
def test_translation_is_total_and_always_a_venue_error(klass):
    assert isinstance(translated(klass("m")), VenueError)
