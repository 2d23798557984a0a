"""Market metadata and reference prices for validation and the sweeps.

Reference prices are cached in Redis so that validating a market order's
minimum notional costs one ticker request per symbol per few seconds
cluster-wide, not one per order. A cached price younger than
``PRICE_FRESH_S`` is used as is; an older one, up to ``PRICE_CACHE_TTL_S``,
is still used, marked stale, and the order that saw it refreshes it after its
own exchange call (``refresh_reference_price``). So no order waits for a
ticker before its create unless no price is cached at all: a ticker fetched
before the create was the p99 of enqueue -> exchange ack (execq bench: one
order in 25 paid a second exchange round trip at 50 orders/s).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from redis.client import Pipeline

from workers import redis_keys
from workers.exchange import gateway
from workers.exchange.errors import Refused
from workers.exchange.reads import read_with_retries
from workers.redis_client import get_redis

# Seconds. A price this young is not refreshed; the aged sweep rewrites the
# prices it watches every few seconds anyway.
PRICE_FRESH_S = 5
# Seconds a cached price lives. The minimum-notional check is a pre-check (the
# exchange has the last word), so a price up to a minute old serves it; after
# that an order asks the exchange before validating. Every writer sets this
# expiry, so a price's age is this minus its remaining time to live.
PRICE_CACHE_TTL_S = 60


def find_market(account: str, symbol: str) -> Mapping[str, Any] | None:
    """The ccxt market for ``symbol`` on ``account``, or None when the exchange has no such market."""
    venue = gateway.venue(account)
    try:
        return read_with_retries(lambda: venue.market(symbol))
    except Refused:
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


@dataclass(frozen=True)
class ReferencePrice:
    """A recent last price (None when the exchange has none) and whether to refresh it."""

    price: Decimal | None
    # Older than PRICE_FRESH_S: the caller refreshes it once its own exchange call is done.
    stale: bool = False
    # No price was cached: this one was just asked of the exchange.
    fetched: bool = False


def queue_cached_price_read(pipe: Pipeline, account: str, symbol: str) -> None:
    """Queue on ``pipe`` the two reads ``reference_price`` takes the replies of.

    The caller may queue its own reads after them: an order's validation reads
    the kill switch in the same round trip.
    """
    key = redis_keys.price_cache(account, symbol)
    pipe.get(key)
    pipe.pttl(key)


def reference_price(account: str, symbol: str, replies: Sequence[Any]) -> ReferencePrice:
    """The cached last price with its staleness, from ``queue_cached_price_read``'s
    ``replies``; else one ticker request."""
    cached, ttl_ms = replies
    if cached is not None:
        age_s = PRICE_CACHE_TTL_S - max(0, ttl_ms) / 1000
        return ReferencePrice(Decimal(cached), stale=age_s >= PRICE_FRESH_S)
    return ReferencePrice(refresh_reference_price(account, symbol), fetched=True)


def refresh_reference_price(account: str, symbol: str) -> Decimal | None:
    """Ask the exchange for the last price and cache it; raises the read's errors."""
    venue = gateway.venue(account)
    price = read_with_retries(lambda: venue.last_price(symbol))
    if price is not None:
        cache_prices({(account, symbol): price})
    return price
