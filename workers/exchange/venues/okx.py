"""OKX v5 USDT-margined perpetual swaps (trading account in net mode) through ``ccxt.okx``.

- OKX sizes orders and positions in **contracts** of ``ctVal`` base units
  (ccxt's ``contractSize``: 0.01 BTC, 0.1 ETH, 1000 DOGE...). execq counts base
  units everywhere, so this venue converts at its edge: a create's amount
  goes out in contracts (refused here when it is not a whole number of lots,
  rather than truncated by ccxt), every order and position it returns is in
  base units, and ``market()``/``markets()`` give copies of ccxt's markets with
  the amount step and limits in base units.
- A client order id (``clOrdId``) is 1-32 letters and digits. execq's ids
  (``xq<leg>-<digest>``, 36 characters) become ``xq<leg><digest>`` cut to 32
  (:meth:`Okx.client_id_for`); that id is what OKX sees and answers with.
- OKX refuses a ``clOrdId`` (51016) only while an order with it is pending: a
  finished order's id places a second order, as on Binance, so a create whose
  outcome is in doubt is looked up, never resent.
- Order placement answers HTTP 200 with ids only; a refusal is ``code`` "1"
  with the order's own ``sCode`` inside ``data``, which is the code that says
  why (:meth:`Okx.error_code`).
- Signed requests carry ``OK-ACCESS-TIMESTAMP`` (ccxt's ``nonce()``); a
  placement may also carry an ``expTime`` header, after which OKX refuses it
  (50036): that header is the validity window of a create.
- A lookup by client id asks the order-details endpoint (the newest order with
  that ``clOrdId``), then the recent order history.
- Order lists and positions are asked for swaps only (``instType`` SWAP); a
  position row with ``posSide`` long/short means hedge mode, which execq
  refuses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from decimal import Decimal
from typing import Any

import ccxt
from ccxt.base import errors as ccxt_errors

from workers.exchange.errors import (
    DuplicateClientId,
    OrderNotFound,
    RateLimited,
    Refused,
    StaleRequest,
    VenueError,
)
from workers.exchange.venues.base import (
    ExchangeOrder,
    ExchangePosition,
    OrderRequest,
    SigningWindow,
    Traits,
    Venue,
    overridden_nonce,
    raw_decimal,
)

#: OKX's client order id: 1-32 letters and digits.
CLIENT_ID_LENGTH = 32
_NOT_ALPHANUMERIC = re.compile(r"[^A-Za-z0-9]")
#: The most orders one page of an order list holds (``limit``).
PAGE_SIZE = 100
#: Open orders read at most this many pages (10,000 orders) in one call.
MAX_PAGES = 100
#: ``instId`` of the positions endpoint takes at most this many instruments.
POSITIONS_PER_REQUEST = 10
SWAPS = {"instType": "SWAP"}


def contract_size_of(market: Mapping[str, Any]) -> Decimal | None:
    """Base units per contract of a ccxt OKX market (OKX's ``ctVal``); None when it has none."""
    info = market.get("info")
    raw = info.get("ctVal") if isinstance(info, Mapping) else None
    size = raw_decimal(raw) or raw_decimal(market.get("contractSize"))
    return size if size is not None and size > 0 else None


def _scaled(value: Any, size: Decimal) -> float | None:
    number = raw_decimal(value)
    # ccxt's markets hold floats; the product of two short decimals survives the trip.
    return None if number is None else float(number * size)


def in_base_units(market: Mapping[str, Any]) -> Mapping[str, Any]:
    """A copy of the ccxt market with the amount step and limits in base units.

    Only ``precision.amount`` and ``limits.amount`` count contracts in ccxt's
    market; prices, costs and leverage do not, and ``info`` (OKX's own
    instrument, in contracts) is shared unchanged.
    """
    size = contract_size_of(market)
    if size is None or size == 1:
        return market
    converted = dict(market)
    precision = dict(market.get("precision") or {})
    precision["amount"] = _scaled(precision.get("amount"), size)
    limits = {
        name: dict(value) if isinstance(value, Mapping) else value
        for name, value in (market.get("limits") or {}).items()
    }
    amount = limits.get("amount")
    if isinstance(amount, dict):
        amount["min"] = _scaled(amount.get("min"), size)
        amount["max"] = _scaled(amount.get("max"), size)
    converted["precision"] = precision
    converted["limits"] = limits
    return converted


class Okx(Venue):
    exchange = "okx"
    ccxt_class = "okx"
    traits = Traits(refuses_reused_client_id=False, create_reports_fill=False)
    # Weights against execq's shared budget, from OKX's own per-endpoint limits: an
    # endpoint allowed 60 requests per 2 s weighs 1, one allowed 10 per 2 s weighs 6.
    operations: Mapping[tuple[str, str], tuple[str, int]] = {
        ("GET", "/api/v5/public/instruments"): ("markets", 3),
        ("GET", "/api/v5/asset/currencies"): ("markets", 5),
        ("GET", "/api/v5/market/tickers"): ("tickers", 3),
        ("GET", "/api/v5/market/ticker"): ("tickers", 3),
        ("GET", "/api/v5/public/time"): ("time", 6),
        ("GET", "/api/v5/system/status"): ("time", 6),
        ("POST", "/api/v5/trade/order"): ("create_order", 1),
        ("POST", "/api/v5/trade/batch-orders"): ("create_order", 1),
        ("GET", "/api/v5/trade/order"): ("fetch_order", 1),
        ("POST", "/api/v5/trade/cancel-order"): ("cancel_order", 1),
        ("GET", "/api/v5/trade/orders-pending"): ("open_orders", 1),
        ("GET", "/api/v5/trade/orders-history"): ("order_history", 2),
        ("GET", "/api/v5/trade/orders-history-archive"): ("order_history", 3),
        ("GET", "/api/v5/account/positions"): ("positions", 6),
        ("GET", "/api/v5/account/balance"): ("balance", 6),
        ("GET", "/api/v5/asset/balances"): ("balance", 5),
        ("GET", "/api/v5/account/config"): ("account", 12),
    }
    error_codes: Mapping[str, type[VenueError]] = {
        # "Client order ID already exists" (ccxt: InvalidOrder): a pending order has it.
        "51016": DuplicateClientId,
        # "Order does not exist" on a lookup.
        "51603": OrderNotFound,
        # A cancel of an order that is filled, canceled or unknown.
        "51400": OrderNotFound,
        "51401": OrderNotFound,
        "51402": OrderNotFound,
        # "Timestamp request expired" (ccxt: InvalidNonce).
        "50102": StaleRequest,
        # The placement arrived after its expTime (ccxt: a plain ExchangeError).
        "50036": StaleRequest,
        # Insufficient margin (ccxt: InsufficientFunds).
        "51008": Refused,
        # A reduce-only order without a position, or in the position's direction
        # (ccxt 4.5 leaves both a plain ExchangeError).
        "51169": Refused,
        "51170": Refused,
        # "Too Many Requests" (ccxt: RateLimitExceeded), and the account's order-rate
        # limit (ccxt: ExchangeError).
        "50011": RateLimited,
        "50061": RateLimited,
    }

    def __init__(self, account: str, client_provider: Callable[[str], ccxt.Exchange]) -> None:
        super().__init__(account, client_provider)
        # ccxt's markets (shared by every client of the process) and their base-unit copies.
        self._converted: tuple[Mapping[str, Any], Mapping[str, Mapping[str, Any]]] | None = None

    @classmethod
    def apply_mode(cls, client: ccxt.Exchange, mode: str) -> None:
        # OKX's demo trading is its sandbox (ccxt sends x-simulated-trading).
        if mode in ("demo", "testnet"):
            client.set_sandbox_mode(True)

    @classmethod
    def client_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        options = dict(config.get("options") or {})
        # ccxt.okx lists spot, futures and options too by default; execq trades swaps.
        options["fetchMarkets"] = {"types": ["swap"]}
        options["defaultType"] = "swap"
        return {**config, "options": options}

    @classmethod
    def client_id_for(cls, client_order_id: str) -> str:
        """``xq<leg>-<digest>`` without its dash, cut to 32 characters.

        Distinct execq ids stay distinct: the digest keeps at least 18 base32
        characters (90 bits), and an id of one leg can equal an id of another
        only where the digests coincide. Ids execq did not make keep their
        letters and digits.
        """
        return _NOT_ALPHANUMERIC.sub("", client_order_id)[:CLIENT_ID_LENGTH]

    def error_code(self, exc: ccxt_errors.BaseError) -> str | None:
        """The failed order's ``sCode`` when the answer has one, else the answer's ``code``.

        Only an answer the exception carries counts (ccxt.okx puts the whole body in
        its message): an exception ccxt raised before sending must not take the code
        of an earlier answer.
        """
        body = getattr(self.client, "last_json_response", None)
        if not isinstance(body, Mapping):
            return None
        candidates = [
            item.get("sCode") for item in body.get("data") or [] if isinstance(item, Mapping)
        ]
        candidates.append(body.get("code"))
        message = str(exc)
        for candidate in candidates:
            code = None if candidate is None else str(candidate)
            if code in (None, "", "0"):
                continue
            return code if re.search(rf"\b{re.escape(code)}\b", message) else None
        return None

    # --- markets -----------------------------------------------------------------------------

    def markets(self) -> Mapping[str, Mapping[str, Any]]:
        source = self._call("markets", lambda: self.client.markets or {})
        converted = self._converted
        if converted is None or converted[0] is not source:
            converted = (source, {name: in_base_units(m) for name, m in source.items()})
            self._converted = converted
        return converted[1]

    def market(self, symbol: str) -> Mapping[str, Any]:
        found = super().market(symbol)
        return self.markets().get(found["symbol"]) or in_base_units(found)

    def market_order_maximum(self, market: Mapping[str, Any]) -> Decimal | None:
        # ccxt leaves OKX's market-order maximum (contracts) in the raw instrument.
        info = market.get("info")
        contracts = raw_decimal(info.get("maxMktSz")) if isinstance(info, Mapping) else None
        size = contract_size_of(market)
        if contracts is None or contracts <= 0 or size is None:
            return None
        return contracts * size

    def contract_size(self, symbol: str) -> Decimal:
        market = self._call("markets", lambda: self.client.market(symbol))
        return contract_size_of(market) or Decimal(1)

    def _in_base_units(self, order: ExchangeOrder, symbol: str | None) -> ExchangeOrder:
        size = self.contract_size(order.symbol or symbol or "")
        return replace(
            order,
            amount=None if order.amount is None else order.amount * size,
            filled=None if order.filled is None else order.filled * size,
        )

    def contracts_for(self, symbol: str, amount: Decimal) -> Decimal:
        """``amount`` (base units) in contracts; ``Refused`` unless it is whole lots."""
        size = self.contract_size(symbol)
        contracts = Decimal(format(amount / size, "f"))
        with self._translated("create_order"):
            on_grid = Decimal(self.client.amount_to_precision(symbol, format(contracts, "f")))
        if on_grid != contracts:
            raise Refused(
                f"{self.account} {symbol}: {amount} is {contracts} contracts of {size}; "
                "OKX takes whole lots only",
                venue=self.exchange,
                operation="create_order",
                reached_exchange=False,
            )
        return contracts

    # --- orders ------------------------------------------------------------------------------

    def create_order(
        self, request: OrderRequest, signing: SigningWindow | None = None
    ) -> ExchangeOrder:
        contracts = self.contracts_for(request.symbol, request.amount)
        answer = super().create_order(replace(request, amount=contracts), signing)
        # The placement answers ids only (ccxt fills in nothing reliable beside them).
        return _ids_only(answer, request.symbol)

    @contextmanager
    def signed(
        self, client: ccxt.Exchange, params: dict[str, Any], signing: SigningWindow | None
    ) -> Iterator[None]:
        if signing is None:
            yield
            return
        # ccxt merges the client's headers into every request it sends (sandbox mode
        # keeps its own header there): add expTime for this request only.
        headers = client.headers
        expires_ms = signing.timestamp_ms + signing.recv_window_ms
        client.headers = {**(headers or {}), "expTime": str(expires_ms)}
        try:
            with overridden_nonce(client, signing.timestamp_ms):
                yield
        finally:
            client.headers = headers

    def fetch_order_by_id(self, symbol: str, exchange_order_id: str) -> ExchangeOrder | None:
        found = super().fetch_order_by_id(symbol, exchange_order_id)
        return None if found is None else self._in_base_units(found, symbol)

    def find_by_client_id(self, symbol: str, client_order_id: str) -> ExchangeOrder | None:
        exchange_id = self.client_id_for(client_order_id)
        try:
            order = self._call(
                "fetch_order",
                lambda: self.client.fetch_order(None, symbol, {"clOrdId": exchange_id}),
            )
        except OrderNotFound:
            order = None
        if order is not None and order.get("clientOrderId") == exchange_id:
            return self._in_base_units(ExchangeOrder.from_ccxt(order), symbol)
        # The details endpoint may no longer show an order the history still lists.
        for seen in self._history(symbol):
            if seen.get("clientOrderId") == exchange_id:
                return self._in_base_units(ExchangeOrder.from_ccxt(seen), symbol)
        return None

    def _history(self, symbol: str) -> list[dict[str, Any]]:
        """The symbol's finished orders of the last days, newest first (one page)."""

        def read() -> list[dict[str, Any]]:
            client = self.client
            market = client.market(symbol)
            answer = client.privateGetTradeOrdersHistory(
                {**SWAPS, "instId": market["id"], "limit": str(PAGE_SIZE)}
            )
            return client.parse_orders(answer.get("data") or [], market)

        orders = self._call("order_history", read)
        return sorted(orders, key=lambda order: int(order.get("id") or 0), reverse=True)

    def cancel_order(
        self, symbol: str, *, exchange_order_id: str | None, client_order_id: str | None
    ) -> ExchangeOrder:
        answer = super().cancel_order(
            symbol, exchange_order_id=exchange_order_id, client_order_id=client_order_id
        )
        # The cancel answers ids only, like the placement.
        return _ids_only(answer, symbol)

    def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        params: dict[str, Any] = dict(SWAPS)
        found: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            page = self._call(
                "open_orders",
                lambda p=dict(params): self.client.fetch_open_orders(symbol, None, PAGE_SIZE, p),
            )
            found.extend(page)
            if len(page) < PAGE_SIZE:
                break
            # Newest first, paged to older ones by the oldest id seen.
            params["after"] = str(min(int(order["id"]) for order in page))
        return [self._in_base_units(ExchangeOrder.from_ccxt(order), symbol) for order in found]

    # --- positions -----------------------------------------------------------------------------

    def positions(self, symbols: list[str] | None = None) -> list[ExchangePosition]:
        if symbols is None:
            raws = self._call("positions", lambda: self.client.fetch_positions(None, dict(SWAPS)))
        else:
            raws = []
            for start in range(0, len(symbols), POSITIONS_PER_REQUEST):
                batch = symbols[start : start + POSITIONS_PER_REQUEST]
                raws.extend(
                    self._call(
                        "positions", lambda b=batch: self.client.fetch_positions(b, dict(SWAPS))
                    )
                )
        return [self.parse_position(raw) for raw in raws]

    def is_hedged(self, raw: Mapping[str, Any]) -> bool:
        return (raw.get("info") or {}).get("posSide") in ("long", "short")


def _ids_only(answer: ExchangeOrder, symbol: str) -> ExchangeOrder:
    return ExchangeOrder(
        id=answer.id,
        client_order_id=answer.client_order_id,
        symbol=symbol,
        status=None,
        amount=None,
        filled=None,
        average=None,
        reduce_only=None,
    )
