"""Bybit v5 (unified account, linear perpetuals) through ``ccxt.bybit``.

- The create answers with ids only (no status, no fill): one fetch after it
  tells how it went. Fetching one order needs ``acknowledged``.
- A client order id (``orderLinkId``) is refused forever once used (110072),
  so resending a create whose outcome is unknown cannot double an order: the
  copy is refused as a duplicate, which proves the first exists.
- A lookup by client id goes through open orders, then the order history.
- ``fetch_positions`` takes one symbol at a time (or a settle coin) and
  returns zero-size rows.
- Signed requests carry their timestamp and window in headers; ccxt takes the
  timestamp from ``nonce()`` and the window from ``options['recvWindow']``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import ccxt

from workers.exchange.errors import DuplicateClientId, OrderNotFound, StaleRequest, VenueError
from workers.exchange.venues.base import (
    ExchangeOrder,
    ExchangePosition,
    SigningWindow,
    Traits,
    Venue,
    overridden_nonce,
    raw_decimal,
)


class Bybit(Venue):
    exchange = "bybit"
    ccxt_class = "bybit"
    traits = Traits(refuses_reused_client_id=True, create_reports_fill=False)
    # Unified-account detection: two requests ccxt would make in every client.
    shared_options = ("enableUnifiedMargin", "enableUnifiedAccount", "unifiedMarginStatus")
    operations: Mapping[tuple[str, str], tuple[str, int]] = {
        ("GET", "/v5/market/instruments-info"): ("markets", 10),
        ("GET", "/v5/asset/coin/query-info"): ("markets", 5),
        ("GET", "/v5/market/tickers"): ("tickers", 5),
        ("GET", "/v5/market/time"): ("time", 1),
        ("POST", "/v5/order/create"): ("create_order", 1),
        ("POST", "/v5/order/cancel"): ("cancel_order", 1),
        ("GET", "/v5/order/realtime"): ("fetch_order", 1),
        ("GET", "/v5/order/history"): ("order_history", 5),
        ("GET", "/v5/position/list"): ("positions", 5),
        ("GET", "/v5/account/wallet-balance"): ("balance", 5),
        ("GET", "/v5/user/query-api"): ("account", 1),
        ("GET", "/v5/account/info"): ("account", 1),
    }
    error_codes: Mapping[str, type[VenueError]] = {
        # "OrderLinkedID is duplicate" (ccxt: InvalidOrder).
        "110072": DuplicateClientId,
        # "invalid request, please check your server timestamp or recv_window param".
        "10002": StaleRequest,
        # "Order does not exist" / "too late to cancel".
        "110001": OrderNotFound,
    }

    def load_account_facts(self, client: ccxt.Exchange) -> None:
        client.is_unified_enabled()

    @contextmanager
    def signed(
        self, client: ccxt.Exchange, params: dict[str, Any], signing: SigningWindow | None
    ) -> Iterator[None]:
        if signing is None:
            yield
            return
        window = client.options["recvWindow"]
        client.options["recvWindow"] = signing.recv_window_ms
        try:
            with overridden_nonce(client, signing.timestamp_ms):
                yield
        finally:
            client.options["recvWindow"] = window

    def market_order_maximum(self, market: Mapping[str, Any]) -> Decimal | None:
        # ccxt leaves Bybit's market-order maximum in the raw instrument info.
        info = market.get("info")
        lot_size = info.get("lotSizeFilter") if isinstance(info, Mapping) else None
        raw = lot_size.get("maxMktOrderQty") if isinstance(lot_size, Mapping) else None
        value = raw_decimal(raw)
        return value if value is not None and value > 0 else None

    def fetch_order_params(self) -> dict[str, Any]:
        # Without it ccxt refuses fetch_order (it can only see recent orders).
        return {"acknowledged": True}

    def find_by_client_id(self, symbol: str, client_order_id: str) -> ExchangeOrder | None:
        exchange_id = self.client_id_for(client_order_id)
        params = {"orderLinkId": exchange_id}
        for operation, method in (
            ("open_orders", "fetch_open_orders"),
            ("order_history", "fetch_canceled_and_closed_orders"),
        ):
            orders = self._call(
                operation,
                lambda m=method: getattr(self.client, m)(symbol, None, None, dict(params)),
            )
            for order in orders:
                if order.get("clientOrderId") == exchange_id:
                    return ExchangeOrder.from_ccxt(order)
        return None

    def cancel_params(self, client_order_id: str | None) -> dict[str, Any]:
        return {"orderLinkId": client_order_id and self.client_id_for(client_order_id)}

    def cancel_order(
        self, symbol: str, *, exchange_order_id: str | None, client_order_id: str | None
    ) -> ExchangeOrder:
        order = super().cancel_order(
            symbol, exchange_order_id=exchange_order_id, client_order_id=client_order_id
        )
        # The cancel answers with ids only, like the create.
        return ExchangeOrder(
            id=order.id,
            client_order_id=order.client_order_id or client_order_id,
            symbol=symbol,
            status=None,
            amount=None,
            filled=None,
            average=None,
            reduce_only=None,
        )

    def positions(self, symbols: list[str] | None = None) -> list[ExchangePosition]:
        if symbols is None:
            raws = self._call(
                "positions", lambda: self.client.fetch_positions(None, {"settleCoin": "USDT"})
            )
        else:
            raws = []
            for symbol in symbols:
                raws.extend(
                    self._call("positions", lambda s=symbol: self.client.fetch_positions([s]))
                )
        return [self.parse_position(raw) for raw in raws]

    def is_hedged(self, raw: Mapping[str, Any]) -> bool:
        return str((raw.get("info") or {}).get("positionIdx", "0")) in ("1", "2")
