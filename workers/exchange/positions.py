"""Positions as the exchange reports them, and the Redis position cache.

Every positions read writes the cache (size and entry per account and symbol,
short expiry), so verification can ask the cache before spending a REST call;
a feed may fill the same keys later. A cache miss means "don't know", never
"no position".

Each venue reads positions its exchange's way (``workers.exchange.venues``).
Hedge mode (two positions per symbol) is refused: execq books one-way
positions only.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from workers import redis_keys
from workers.exchange import gateway
from workers.exchange.reads import read_with_retries
from workers.exchange.venues.base import ExchangePosition, HedgeModeUnsupported
from workers.redis_client import get_redis
from workers.settings import get_settings

__all__ = [
    "ExchangePosition",
    "HedgeModeUnsupported",
    "cache_positions",
    "cached_position_size",
    "fetch_positions",
]


def fetch_positions(account: str, symbols: list[str] | None = None) -> list[ExchangePosition]:
    """Non-zero positions on ``account`` (all symbols when ``symbols`` is None).

    Writes the position cache for every symbol asked about, zero included.
    Raises ``VenueError`` (``HedgeModeUnsupported`` for a hedge-mode account).
    """
    venue = gateway.venue(account)
    positions = read_with_retries(lambda: venue.positions(symbols))
    non_zero = [position for position in positions if position.size != 0]
    seen = {position.symbol: position for position in non_zero}
    for symbol in symbols or []:
        seen.setdefault(symbol, ExchangePosition(account, symbol, Decimal(0), None, None))
    cache_positions(seen.values())
    return non_zero


def cache_positions(positions: Any) -> None:
    ttl_s = get_settings().position_cache_ttl_s
    now = datetime.now(UTC).isoformat()
    pipe = get_redis().pipeline(transaction=False)
    for position in positions:
        pipe.set(
            redis_keys.position_cache(position.account, position.symbol),
            json.dumps(
                {
                    "size": str(position.size),
                    "entry_price": None
                    if position.entry_price is None
                    else str(position.entry_price),
                    "at": now,
                }
            ),
            ex=ttl_s,
        )
    pipe.execute()


def cached_position_size(account: str, symbol: str) -> Decimal | None:
    """The cached signed size, or None on a miss (which is not a "no")."""
    raw = get_redis().get(redis_keys.position_cache(account, symbol))
    if raw is None:
        return None
    return Decimal(json.loads(raw)["size"])
