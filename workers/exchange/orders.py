"""Order calls on a real ccxt client, with each exchange's quirks in one place.

- Binance USDⓈ-M: create with ``newOrderRespType=RESULT`` so a market order's
  response carries its fill; look up by client id with ``origClientOrderId``.
  Binance keeps a client id unique only among *open* orders.
- Bybit v5: the create response has only ids (no status, no fill); fetching
  one order needs ``acknowledged``; a client-id (``orderLinkId``) lookup goes
  through open orders, then order history.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import ccxt


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value))


@dataclass(frozen=True)
class ExchangeOrder:
    """What the exchange said about one order (ccxt unified fields as Decimals)."""

    id: str | None
    client_order_id: str | None
    status: str | None
    amount: Decimal | None
    filled: Decimal | None
    average: Decimal | None
    reduce_only: bool | None

    @classmethod
    def from_ccxt(cls, order: dict[str, Any]) -> ExchangeOrder:
        return cls(
            id=order.get("id"),
            client_order_id=order.get("clientOrderId"),
            status=order.get("status"),
            amount=_decimal(order.get("amount")),
            filled=_decimal(order.get("filled")),
            average=_decimal(order.get("average")) or _decimal(order.get("price")),
            reduce_only=order.get("reduceOnly"),
        )


def _is_bybit(client: ccxt.Exchange) -> bool:
    return client.id == "bybit"


def create_order(
    client: ccxt.Exchange,
    *,
    symbol: str,
    order_type: str,
    side: str,
    amount: Decimal,
    price: Decimal | None,
    client_order_id: str,
    reduce_only: bool,
    time_in_force: str | None,
) -> ExchangeOrder:
    params: dict[str, Any] = {"clientOrderId": client_order_id}
    if reduce_only:
        params["reduceOnly"] = True
    if order_type == "limit" and time_in_force:
        params["timeInForce"] = time_in_force
    if not _is_bybit(client):
        params["newOrderRespType"] = "RESULT"
    order = client.create_order(
        symbol,
        order_type,
        side,
        str(amount),
        None if price is None else str(price),
        params,
    )
    return ExchangeOrder.from_ccxt(order)


def fetch_order_by_id(client: ccxt.Exchange, symbol: str, order_id: str) -> ExchangeOrder | None:
    """The order by exchange id, or None when the exchange does not (yet) show it."""
    params: dict[str, Any] = {"acknowledged": True} if _is_bybit(client) else {}
    try:
        order = client.fetch_order(order_id, symbol, params)
    except ccxt.OrderNotFound:
        return None
    return ExchangeOrder.from_ccxt(order)


def find_order_by_client_id(
    client: ccxt.Exchange, symbol: str, client_order_id: str
) -> ExchangeOrder | None:
    """The order with this client id, or None when the exchange does not show one.

    None right after a create is not proof of absence: the exchange may not
    show a fresh order for seconds. Callers repeat the lookup over the
    visibility window before concluding anything.
    """
    if _is_bybit(client):
        params = {"orderLinkId": client_order_id}
        for fetch in (client.fetch_open_orders, client.fetch_canceled_and_closed_orders):
            for order in fetch(symbol, None, None, dict(params)):
                if order.get("clientOrderId") == client_order_id:
                    return ExchangeOrder.from_ccxt(order)
        return None
    try:
        order = client.fetch_order(None, symbol, {"origClientOrderId": client_order_id})
    except ccxt.OrderNotFound:
        return None
    return ExchangeOrder.from_ccxt(order)


def fetch_own_order(
    client: ccxt.Exchange, symbol: str, exchange_order_id: str | None, client_order_id: str
) -> ExchangeOrder | None:
    """Our order by exchange id when we know it, else by client id; None when not visible.

    A miss by id falls back to the client id: Bybit's by-id endpoint only knows
    open orders and the 500 most recent finished ones, and an older filled
    order is found in the order history only (by its orderLinkId).
    """
    if exchange_order_id:
        found = fetch_order_by_id(client, symbol, exchange_order_id)
        if found is not None:
            return found
    return find_order_by_client_id(client, symbol, client_order_id)


def retry_after_s(client: ccxt.Exchange) -> float | None:
    """The Retry-After the exchange sent with its last response, if any."""
    headers = getattr(client, "last_response_headers", None) or {}
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None
