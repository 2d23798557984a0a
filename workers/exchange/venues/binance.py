"""Binance USDⓈ-M futures through ``ccxt.binanceusdm``.

- The create asks for ``newOrderRespType=RESULT``, so a market order's answer
  carries its fill.
- A client order id (``newClientOrderId``) is unique among *open* orders only:
  a finished order's id is accepted again and becomes a second order. A resend
  after an ambiguous create can therefore double an order here.
- Lookups by client id use ``origClientOrderId``; a cancel of an order that is
  no longer open answers -2011.
- Signed requests carry ``timestamp`` and ``recvWindow`` as parameters, so the
  validity window is set per request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import ccxt

from workers.exchange.errors import DuplicateClientId, OrderNotFound, StaleRequest, VenueError
from workers.exchange.venues.base import (
    ExchangeOrder,
    OrderRequest,
    SigningWindow,
    Traits,
    Venue,
)


class BinanceUsdm(Venue):
    exchange = "binance"
    ccxt_class = "binanceusdm"
    traits = Traits(refuses_reused_client_id=False, create_reports_fill=True)
    # Needed by fetch_positions; ccxt would load them once per client.
    shared_options = ("leverageBrackets",)
    operations: Mapping[tuple[str, str], tuple[str, int]] = {
        ("GET", "/fapi/v1/exchangeInfo"): ("markets", 10),
        ("GET", "/fapi/v1/ticker/24hr"): ("tickers", 5),
        ("GET", "/fapi/v1/ticker/price"): ("tickers", 2),
        ("GET", "/fapi/v2/ticker/price"): ("tickers", 2),
        ("GET", "/fapi/v1/ticker/bookTicker"): ("tickers", 2),
        ("GET", "/fapi/v1/premiumIndex"): ("tickers", 1),
        ("GET", "/fapi/v1/time"): ("time", 1),
        ("POST", "/fapi/v1/order"): ("create_order", 1),
        ("GET", "/fapi/v1/order"): ("fetch_order", 1),
        ("GET", "/fapi/v1/openOrder"): ("fetch_order", 1),
        ("DELETE", "/fapi/v1/order"): ("cancel_order", 1),
        ("GET", "/fapi/v1/openOrders"): ("open_orders", 5),
        ("GET", "/fapi/v1/allOrders"): ("order_history", 5),
        ("GET", "/fapi/v3/positionRisk"): ("positions", 5),
        ("GET", "/fapi/v2/positionRisk"): ("positions", 5),
        ("GET", "/fapi/v3/account"): ("balance", 5),
        ("GET", "/fapi/v2/account"): ("balance", 5),
        ("GET", "/fapi/v2/balance"): ("balance", 5),
        ("GET", "/fapi/v3/balance"): ("balance", 5),
        ("GET", "/fapi/v1/leverageBracket"): ("account", 1),
    }
    error_codes: Mapping[str, type[VenueError]] = {
        # DUPLICATED_CLIENT_ORDER_ID (ccxt: InvalidOrder): an open order has this id.
        "-4116": DuplicateClientId,
        # "Timestamp for this request is outside of the recvWindow" (ccxt: BadRequest).
        "-1021": StaleRequest,
        # "Unknown order sent" on a cancel (ccxt: OperationRejected).
        "-2011": OrderNotFound,
        # "Order does not exist."
        "-2013": OrderNotFound,
    }

    @classmethod
    def apply_mode(cls, client: ccxt.Exchange, mode: str) -> None:
        if mode == "testnet":
            # Binance's futures testnet is gone; demo trading replaced it.
            raise ValueError("Binance USDⓈ-M has no testnet any more; use mode 'demo'")
        super().apply_mode(client, mode)

    def load_account_facts(self, client: ccxt.Exchange) -> None:
        client.load_leverage_brackets()

    def create_params(self, request: OrderRequest) -> dict[str, Any]:
        return super().create_params(request) | {"newOrderRespType": "RESULT"}

    @contextmanager
    def signed(
        self, client: ccxt.Exchange, params: dict[str, Any], signing: SigningWindow | None
    ) -> Iterator[None]:
        if signing is not None:
            # ccxt's sign() lets request parameters override its own timestamp and window.
            params["timestamp"] = signing.timestamp_ms
            params["recvWindow"] = signing.recv_window_ms
        yield

    def find_by_client_id(self, symbol: str, client_order_id: str) -> ExchangeOrder | None:
        try:
            order = self._call(
                "fetch_order",
                lambda: self.client.fetch_order(
                    None, symbol, {"origClientOrderId": self.client_id_for(client_order_id)}
                ),
            )
        except OrderNotFound:
            return None
        return ExchangeOrder.from_ccxt(order)

    def cancel_params(self, client_order_id: str | None) -> dict[str, Any]:
        return {"origClientOrderId": client_order_id and self.client_id_for(client_order_id)}

    def is_hedged(self, raw: Mapping[str, Any]) -> bool:
        return (raw.get("info") or {}).get("positionSide") in ("LONG", "SHORT")
