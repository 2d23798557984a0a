"""A signal's market, read from the account's ccxt markets (the market checks' input).

The markets are loaded once per process (``gateway.get_client``); this reads
them, resolves the signal's symbol to exactly one linear perpetual
(``workers.execution.validation.perpetual_for``) and turns the market into
``MarketRules``. Raises ``SignalRejected`` for a symbol the account does not
trade, and the exchange errors of loading the markets (the task tries later).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import ccxt

from workers.exchange import gateway
from workers.exchange.reads import read_with_retries
from workers.execution.validation import MarketRules, market_rules, perpetual_for


def _ccxt_resolution(client: ccxt.Exchange, symbol: str) -> str | None:
    """The symbol ccxt's ``market()`` makes of ``symbol`` (it accepts aliases)."""
    try:
        return str(client.market(symbol)["symbol"])
    except (ccxt.BadSymbol, KeyError, TypeError):
        return None


def _market_order_maximum(market: Mapping[str, Any]) -> Decimal | None:
    """Bybit's market-order maximum, which ccxt leaves in the raw instrument info."""
    info = market.get("info")
    lot_size = info.get("lotSizeFilter") if isinstance(info, Mapping) else None
    raw = lot_size.get("maxMktOrderQty") if isinstance(lot_size, Mapping) else None
    if raw is None:
        return None
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() and value > 0 else None


def signal_market(account: str, symbol: str) -> MarketRules:
    """The rules of the linear perpetual ``symbol`` names exactly on ``account``."""
    client = read_with_retries(lambda: gateway.get_client(account))
    markets = client.markets or {}
    exact = markets.get(symbol)
    resolved = None if exact is not None else _ccxt_resolution(client, symbol)
    market = perpetual_for(symbol, markets, account=account, resolved=resolved)
    return market_rules(market, market_amount_max=_market_order_maximum(market))
