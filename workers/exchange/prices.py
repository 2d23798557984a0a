"""Market metadata and reference prices for validation and the sweeps.

Reference prices are cached in Redis for a few seconds so that validating a
market order's minimum notional costs one ticker request per symbol per few
seconds cluster-wide, not one per order.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import ccxt

from workers import redis_keys
from workers.exchange import gateway
from workers.exchange.reads import read_with_retries
from workers.redis_client import get_redis

PRICE_CACHE_TTL_S = 5


def find_market(account: str, symbol: str) -> dict[str, Any] | None:
    """The ccxt market for ``symbol`` on ``account``, or None when the exchange has no such market."""
    try:
        return read_with_retries(lambda: gateway.market(account, symbol))
    except (ccxt.BadSymbol, KeyError):
        return None


@dataclass(frozen=True)
class AmountLimits:
    """A market's amount grid: every order amount is a multiple of ``step`` and >= ``minimum``."""

    step: Decimal
    minimum: Decimal


def amount_limits(account: str, symbol: str) -> AmountLimits:
    market = find_market(account, symbol) or {}
    step = (market.get("precision") or {}).get("amount")
    minimum = ((market.get("limits") or {}).get("amount") or {}).get("min")
    return AmountLimits(
        step=Decimal(str(step)) if step else Decimal("0.001"),
        minimum=Decimal(str(minimum)) if minimum else Decimal(0),
    )


def cache_prices(prices: dict[tuple[str, str], Decimal]) -> None:
    """Write many reference prices in one round trip."""
    pipe = get_redis().pipeline(transaction=False)
    for (account, symbol), price in prices.items():
        pipe.set(redis_keys.price_cache(account, symbol), str(price), ex=PRICE_CACHE_TTL_S)
    pipe.execute()


def reference_price(account: str, symbol: str) -> Decimal | None:
    """A recent last price: from the cache, else one ticker request (then cached)."""
    cached = get_redis().get(redis_keys.price_cache(account, symbol))
    if cached is not None:
        return Decimal(cached)
    client = gateway.get_client(account)
    ticker = read_with_retries(lambda: client.fetch_ticker(symbol))
    last = ticker.get("last") or ticker.get("close")
    if last is None:
        return None
    price = Decimal(str(last))
    cache_prices({(account, symbol): price})
    return price
