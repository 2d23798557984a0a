"""The Venue protocol: everything execq asks of an exchange, and the one error boundary.

A venue is one exchange's module (``binance.py``, ``bybit.py``): it places,
finds and cancels orders, reads positions and prices, knows the exchange's
client-id rules and request weights, and translates the exchange's failures
into execq's error tree (``workers.exchange.errors``). No code outside
``workers/exchange/venues/`` asks which exchange it talks to.

:class:`Venue` is a template: the shared behaviour lives here, and an
exchange overrides the hooks where it differs (how a create is parameterised,
how a client-id lookup works, which error codes mean what). Every public
method runs its ccxt call inside :meth:`Venue._call`, which is where ccxt's
exceptions become ``VenueError``\\ s; nothing else catches them.

Translation is by type first (:data:`CCXT_ERROR_KINDS`, every class in
``ccxt.base.errors`` decided explicitly; a unit test fails when ccxt adds one),
then refined by the exchange's own error code where ccxt's class is too coarse
(a duplicate client id and a stale timestamp arrive as ``InvalidOrder`` or
``BadRequest``), then by the transport: a network failure whose exception chain
proves the request never left is ``NotSent`` rather than ``Ambiguous``::

    NetworkError <- requests.ConnectionError <- MaxRetryError <- NewConnectionError <- ConnectionRefusedError
    RequestTimeout <- requests.ConnectTimeout <- MaxRetryError <- ConnectTimeoutError
    RequestTimeout <- requests.ReadTimeout <- ReadTimeoutError <- TimeoutError      (sent: ambiguous)
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import ccxt
import requests.exceptions
import urllib3.exceptions
from ccxt.base import errors as ccxt_errors

from workers.exchange.errors import (
    AccountRefused,
    Ambiguous,
    DuplicateClientId,
    NotSent,
    OrderNotFound,
    RateLimited,
    Refused,
    StaleRequest,
    Unexpected,
    VenueError,
)

T = TypeVar("T")

#: Every exception class in ``ccxt.base.errors`` (ccxt 4.5.x), each decided explicitly.
CCXT_ERROR_KINDS: Mapping[type[ccxt_errors.BaseError], type[VenueError]] = MappingProxyType(
    {
        ccxt_errors.BaseError: Unexpected,
        # The exchange answered with an error ccxt did not map more precisely
        # (also what ccxt raises for SSL errors and redirect loops).
        ccxt_errors.ExchangeError: Unexpected,
        ccxt_errors.AuthenticationError: AccountRefused,
        ccxt_errors.PermissionDenied: AccountRefused,
        ccxt_errors.AccountNotEnabled: AccountRefused,
        ccxt_errors.AccountSuspended: AccountRefused,
        ccxt_errors.RestrictedLocation: AccountRefused,
        # Our own bug: the same call lacks the same argument next time.
        ccxt_errors.ArgumentsRequired: Refused,
        ccxt_errors.BadRequest: Refused,
        ccxt_errors.BadSymbol: Refused,
        ccxt_errors.OperationRejected: Refused,
        ccxt_errors.NoChange: Refused,
        ccxt_errors.MarginModeAlreadySet: Refused,
        ccxt_errors.MarketClosed: Refused,
        ccxt_errors.ManualInteractionNeeded: Refused,
        ccxt_errors.InsufficientFunds: Refused,
        ccxt_errors.InvalidAddress: Refused,
        ccxt_errors.AddressPending: Refused,
        ccxt_errors.InvalidOrder: Refused,
        ccxt_errors.OrderNotFound: OrderNotFound,
        ccxt_errors.OrderNotCached: OrderNotFound,
        ccxt_errors.OrderImmediatelyFillable: Refused,
        ccxt_errors.OrderNotFillable: Refused,
        ccxt_errors.DuplicateOrderId: DuplicateClientId,
        ccxt_errors.ContractUnavailable: Refused,
        ccxt_errors.NotSupported: Refused,
        ccxt_errors.InvalidProxySettings: Refused,
        ccxt_errors.ExchangeClosedByUser: Refused,
        # Binance -1001 "internal error", -1008 "server busy": failed while processing.
        ccxt_errors.OperationFailed: Ambiguous,
        ccxt_errors.NetworkError: Ambiguous,
        ccxt_errors.DDoSProtection: RateLimited,
        ccxt_errors.RateLimitExceeded: RateLimited,
        # ccxt maps HTTP 5xx here: the server may have acted before failing.
        ccxt_errors.ExchangeNotAvailable: Ambiguous,
        # The exchange answered "maintenance": refused, not executed.
        ccxt_errors.OnMaintenance: NotSent,
        # Refused for its nonce/timestamp (Bybit 10002): not executed.
        ccxt_errors.InvalidNonce: StaleRequest,
        ccxt_errors.ChecksumError: Unexpected,
        ccxt_errors.RequestTimeout: Ambiguous,
        # Binance -1006/-1007 "execution status unknown" land here.
        ccxt_errors.BadResponse: Ambiguous,
        ccxt_errors.NullResponse: Ambiguous,
        # The cancel is under way: asking again is harmless.
        ccxt_errors.CancelPending: NotSent,
        # WebSocket bookkeeping only.
        ccxt_errors.UnsubscribeError: Unexpected,
    }
)

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
    """True when the exception chain proves the request did not reach the exchange.

    The *first* transport-level marker decides: an unrelated exception that was
    being handled when the call was made ends up deep in ``__context__``, and
    must not turn a read timeout (the order may exist) into "never sent".
    """
    for link in _chain(exc):
        if isinstance(link, _NOT_SENT):
            return True
        if isinstance(link, _MAYBE_SENT):
            return False
    return False


def error_kind_of(exc: ccxt_errors.BaseError) -> type[VenueError]:
    """The error class for a ccxt exception by its type: the most specific mapped class wins."""
    for klass in type(exc).__mro__:
        kind = CCXT_ERROR_KINDS.get(klass)
        if kind is not None:
            return kind
    return Unexpected


# --- what the venues exchange with the rest of execq -----------------------------------------


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value))


def raw_decimal(value: Any) -> Decimal | None:
    """A number from an exchange's own fields (ccxt's ``info``), which ccxt leaves
    unchecked: None when it is absent or not a finite number."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


@dataclass(frozen=True)
class ExchangeOrder:
    """What the exchange said about one order (ccxt unified fields as Decimals).

    ``status`` is ccxt's unified status (``open``, ``closed``, ``canceled``,
    ``expired``, ``rejected``) or None when the answer did not say (Bybit's create).
    """

    id: str | None
    client_order_id: str | None
    symbol: str | None
    status: str | None
    amount: Decimal | None
    filled: Decimal | None
    average: Decimal | None
    reduce_only: bool | None
    side: str | None = None

    @classmethod
    def from_ccxt(cls, order: Mapping[str, Any]) -> ExchangeOrder:
        return cls(
            id=None if order.get("id") is None else str(order.get("id")),
            client_order_id=order.get("clientOrderId"),
            symbol=order.get("symbol"),
            status=order.get("status"),
            amount=_decimal(order.get("amount")),
            filled=_decimal(order.get("filled")),
            average=_decimal(order.get("average")) or _decimal(order.get("price")),
            reduce_only=order.get("reduceOnly"),
            side=order.get("side"),
        )


@dataclass(frozen=True)
class ExchangePosition:
    account: str
    symbol: str
    size: Decimal  # signed: + long, - short
    entry_price: Decimal | None
    mark_price: Decimal | None


@dataclass(frozen=True)
class OrderRequest:
    """One create, as execq asks for it (amounts in base units, on the market's grid)."""

    symbol: str
    order_type: str  # market | limit
    side: str  # buy | sell
    amount: Decimal
    price: Decimal | None
    client_order_id: str
    reduce_only: bool
    time_in_force: str | None


@dataclass(frozen=True)
class SigningWindow:
    """The request's exchange-side validity: signed as of ``timestamp_ms`` and refused by the
    exchange when it arrives more than ``recv_window_ms`` later (fencing; see
    ``workers.flows.submission``)."""

    timestamp_ms: int
    recv_window_ms: int


class HedgeModeUnsupported(Refused):
    """The account runs in hedge mode; execq supports one-way mode only."""


@dataclass(frozen=True)
class Traits:
    """What the order lifecycle must know of an exchange's rules."""

    #: A reused client order id is refused for as long as the exchange keeps the order
    #: (Bybit's orderLinkId). False where a finished order's id can be used again
    #: (Binance: unique among open orders only), so a resend there can double an order.
    refuses_reused_client_id: bool
    #: The create's answer carries the order's status and fill (Binance with
    #: ``newOrderRespType=RESULT``); when False, one fetch after the create tells them.
    create_reports_fill: bool


# --- the template ----------------------------------------------------------------------------


class Venue:
    """One exchange account's venue. Subclasses set the class attributes and override hooks.

    Methods raise ``VenueError`` subclasses only. ``client_provider`` returns the
    ccxt client of the calling thread for the account (``workers.exchange.gateway``).
    """

    #: The simulator's and the ledger's name for the exchange (``binance``, ``bybit``).
    exchange: ClassVar[str]
    #: The ccxt class name (``binanceusdm``, ``bybit``).
    ccxt_class: ClassVar[str]
    traits: ClassVar[Traits]
    #: ccxt options worth sharing between clients of one account (looked up once).
    shared_options: ClassVar[tuple[str, ...]] = ()
    #: (operation, request weight) by (HTTP method, path); anything else is ``other``, 1.
    operations: ClassVar[Mapping[tuple[str, str], tuple[str, int]]] = {}
    #: The exchange's error codes that ccxt maps too coarsely.
    error_codes: ClassVar[Mapping[str, type[VenueError]]] = {}

    def __init__(self, account: str, client_provider: Callable[[str], ccxt.Exchange]) -> None:
        self.account = account
        self._client_provider = client_provider

    @property
    def client(self) -> ccxt.Exchange:
        return self._client_provider(self.account)

    # --- the error boundary ------------------------------------------------------------------

    @contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        try:
            yield
        except VenueError:
            raise
        except ccxt_errors.BaseError as exc:
            raise self.translate(exc, operation) from exc

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        with self._translated(operation):
            return call()

    def translate(self, exc: ccxt_errors.BaseError, operation: str) -> VenueError:
        """The execq error for a ccxt exception raised by ``operation`` on this venue."""
        kind = error_kind_of(exc)
        code = None
        if exc.__cause__ is None:
            # The exchange answered (ccxt raises transport failures ``from`` the transport's
            # exception): its own code can say more than ccxt's class.
            code = self.error_code(exc)
            kind = self.error_codes.get(code or "", kind)
        reached = True
        if kind is Ambiguous and isinstance(exc, ccxt_errors.NetworkError) and never_sent(exc):
            kind, reached = NotSent, False
        context = {
            "venue": self.exchange,
            "operation": operation,
            "code": code,
            "reached_exchange": reached,
        }
        message = f"{self.account} {operation}: {type(exc).__name__}: {str(exc)[:300]}"
        if issubclass(kind, RateLimited):
            return RateLimited(message, retry_after_s=self.retry_after_s(), **context)
        return kind(message, **context)

    def error_code(self, exc: ccxt_errors.BaseError) -> str | None:
        """The exchange's error code in the answer that raised ``exc`` (None when it had none).

        Only an answer the exception carries counts (ccxt puts the exchange's body in its
        message): an exception ccxt raised before sending must not take the code of an
        earlier answer the client still holds.
        """
        body = getattr(self.client, "last_json_response", None)
        if not isinstance(body, Mapping):
            return None
        for key in ("code", "retCode", "sCode"):
            if body.get(key) not in (None, "", 0, "0"):
                code = str(body[key])
                return code if code in str(exc) else None
        return None

    def retry_after_s(self) -> float | None:
        """The Retry-After the exchange sent with its last answer, if any."""
        headers = getattr(self.client, "last_response_headers", None) or {}
        for name, value in headers.items():
            if name.lower() == "retry-after":
                try:
                    return float(value)
                except (TypeError, ValueError):
                    return None
        return None

    @classmethod
    def client_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The ccxt constructor config for this exchange (the gateway's common one, adjusted)."""
        return config

    @classmethod
    def apply_mode(cls, client: ccxt.Exchange, mode: str) -> None:
        """Point a new client at the account's environment: ``demo`` (the exchange's demo
        trading), ``testnet`` (its sandbox); ``live`` and ``sim`` change nothing here.
        Raises ``ValueError`` for a mode the exchange does not offer."""
        if mode == "demo":
            client.enable_demo_trading(True)
        elif mode == "testnet":
            client.set_sandbox_mode(True)

    @classmethod
    def client_id_for(cls, client_order_id: str) -> str:
        """The id the exchange knows execq's order by (execq's own where the exchange's rules
        admit it: ``xq<leg>-<digest>``, 36 characters of ``[a-z0-9-]``)."""
        return client_order_id

    @classmethod
    def operation_of(cls, method: str, url: str) -> tuple[str, int]:
        """The operation name and request weight of an HTTP request to this exchange."""
        path = urlsplit(url).path
        return cls.operations.get((method.upper(), path), ("other", 1))

    # --- markets and account facts -----------------------------------------------------------

    def load_account_facts(self, client: ccxt.Exchange) -> None:
        """Fetch the per-account facts ccxt would otherwise look up in every client."""

    def market(self, symbol: str) -> Mapping[str, Any]:
        """ccxt's market structure for ``symbol`` (raises ``Refused`` for an unknown one).

        Amounts in it (precision, limits) are in base units, as everywhere in execq: a
        venue whose exchange counts contracts converts (its create converts back)."""
        return self._call("markets", lambda: self.client.market(symbol))

    def markets(self) -> Mapping[str, Mapping[str, Any]]:
        """Every market the account's exchange lists, by ccxt unified symbol."""
        return self._call("markets", lambda: self.client.markets or {})

    def resolve_alias(self, symbol: str) -> str | None:
        """The unified symbol ccxt makes of ``symbol`` (ccxt accepts aliases such as an
        exchange id or a spot symbol); None when it makes nothing of it."""
        try:
            return str(self.market(symbol)["symbol"])
        except (Refused, KeyError, TypeError):
            return None

    def market_order_maximum(self, market: Mapping[str, Any]) -> Decimal | None:
        """The largest amount one market order may have, when the exchange sets one apart
        from the limit orders' maximum (None: the market's amount maximum applies)."""
        return None

    # --- orders --------------------------------------------------------------------------------

    def create_order(
        self, request: OrderRequest, signing: SigningWindow | None = None
    ) -> ExchangeOrder:
        """Place one order; the answer as the exchange gave it."""
        params = self.create_params(request)
        with self._translated("create_order"):
            client = self.client
            with self.signed(client, params, signing):
                order = client.create_order(
                    request.symbol,
                    request.order_type,
                    request.side,
                    str(request.amount),
                    None if request.price is None else str(request.price),
                    params,
                )
        return ExchangeOrder.from_ccxt(order)

    def create_params(self, request: OrderRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"clientOrderId": self.client_id_for(request.client_order_id)}
        if request.reduce_only:
            params["reduceOnly"] = True
        if request.order_type == "limit" and request.time_in_force:
            params["timeInForce"] = request.time_in_force
        return params

    @contextmanager
    def signed(
        self, client: ccxt.Exchange, params: dict[str, Any], signing: SigningWindow | None
    ) -> Iterator[None]:
        """Sign the next request as of ``signing.timestamp_ms`` with its validity window."""
        raise NotImplementedError

    def fetch_order(
        self, symbol: str, *, exchange_order_id: str | None, client_order_id: str
    ) -> ExchangeOrder | None:
        """Our order by exchange id when known, else by client id; None when not visible."""
        if exchange_order_id:
            found = self.fetch_order_by_id(symbol, exchange_order_id)
            if found is not None:
                return found
        return self.find_by_client_id(symbol, client_order_id)

    def fetch_order_by_id(self, symbol: str, exchange_order_id: str) -> ExchangeOrder | None:
        try:
            order = self._call(
                "fetch_order",
                lambda: self.client.fetch_order(
                    exchange_order_id, symbol, self.fetch_order_params()
                ),
            )
        except OrderNotFound:
            return None
        return ExchangeOrder.from_ccxt(order)

    def fetch_order_params(self) -> dict[str, Any]:
        return {}

    def find_by_client_id(self, symbol: str, client_order_id: str) -> ExchangeOrder | None:
        """The order with this client id, or None when the exchange does not show one.

        None right after a create is not proof of absence: a fresh order may stay
        invisible for seconds (the caller looks again over the visibility window).
        """
        raise NotImplementedError

    def cancel_order(
        self, symbol: str, *, exchange_order_id: str | None, client_order_id: str | None
    ) -> ExchangeOrder:
        """Cancel one order by exchange id or client id; the exchange's answer.

        Raises ``OrderNotFound`` when the exchange has no open order by that id
        (already finished, or never placed).
        """
        params = self.cancel_params(client_order_id) if not exchange_order_id else {}
        order = self._call(
            "cancel_order", lambda: self.client.cancel_order(exchange_order_id, symbol, params)
        )
        return ExchangeOrder.from_ccxt(order)

    def cancel_params(self, client_order_id: str | None) -> dict[str, Any]:
        return {"clientOrderId": client_order_id and self.client_id_for(client_order_id)}

    def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        """Open orders on the account (all symbols when ``symbol`` is None)."""
        orders = self._call("open_orders", lambda: self.client.fetch_open_orders(symbol))
        return [ExchangeOrder.from_ccxt(order) for order in orders]

    # --- positions and prices ----------------------------------------------------------------

    def positions(self, symbols: list[str] | None = None) -> list[ExchangePosition]:
        """Every position row the exchange reports (zero-size rows included)."""
        raws = self._call("positions", lambda: self.client.fetch_positions(symbols))
        return [self.parse_position(raw) for raw in raws]

    def parse_position(self, raw: Mapping[str, Any]) -> ExchangePosition:
        if raw.get("hedged") or self.is_hedged(raw):
            raise HedgeModeUnsupported(
                f"{self.account} {raw.get('symbol')}: hedge-mode position; execq supports "
                "one-way mode only",
                venue=self.exchange,
                operation="positions",
            )
        contracts = _decimal(raw.get("contracts")) or Decimal(0)
        size = -contracts if raw.get("side") == "short" else contracts
        return ExchangePosition(
            account=self.account,
            symbol=raw["symbol"],
            size=size * self.contract_size(raw["symbol"]),
            entry_price=_decimal(raw.get("entryPrice")),
            mark_price=_decimal(raw.get("markPrice")),
        )

    def is_hedged(self, raw: Mapping[str, Any]) -> bool:
        """Whether the row belongs to a hedge-mode position (two per symbol)."""
        return False

    def contract_size(self, symbol: str) -> Decimal:
        """Base units per contract (1 for linear perpetuals quoted in base units)."""
        return Decimal(1)

    def last_prices(self, symbols: list[str]) -> dict[str, Decimal]:
        """The last traded price of each symbol that has one."""
        tickers = self._call("tickers", lambda: self.client.fetch_tickers(symbols))
        prices: dict[str, Decimal] = {}
        for symbol, ticker in tickers.items():
            last = ticker.get("last") or ticker.get("close")
            if last is not None and symbol in symbols:
                prices[symbol] = Decimal(str(last))
        return prices

    def last_price(self, symbol: str) -> Decimal | None:
        ticker = self._call("tickers", lambda: self.client.fetch_ticker(symbol))
        last = ticker.get("last") or ticker.get("close")
        return None if last is None else Decimal(str(last))


@contextmanager
def overridden_nonce(client: ccxt.Exchange, timestamp_ms: int) -> Iterator[None]:
    """Make the client sign its next requests as of ``timestamp_ms`` (this thread's client)."""
    client.nonce = lambda: timestamp_ms
    try:
        yield
    finally:
        del client.nonce
