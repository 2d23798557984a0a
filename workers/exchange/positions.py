"""Positions as the exchange reports them, and the Redis position cache.

Every positions read writes the cache (size and entry per account and symbol,
short expiry), so verification can ask the cache before spending a REST call;
a feed may fill the same keys later. A cache miss means "don't know", never
"no position".

Bybit's positions endpoint takes one symbol per call (or a settle coin) and
returns zero-size rows; Binance returns every symbol. Hedge mode (two
positions per symbol) is refused: execq books one-way positions only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from workers import redis_keys
from workers.exchange import gateway
from workers.exchange.reads import read_with_retries
from workers.redis_client import get_redis
from workers.settings import get_settings


class HedgeModeUnsupported(Exception):
    """The account runs in hedge mode; execq supports one-way mode only."""


@dataclass(frozen=True)
class ExchangePosition:
    account: str
    symbol: str
    size: Decimal  # signed: + long, - short
    entry_price: Decimal | None
    mark_price: Decimal | None


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value))


def _parse(account: str, raw: dict[str, Any]) -> ExchangePosition:
    info = raw.get("info") or {}
    if (
        raw.get("hedged")
        or info.get("positionSide") in ("LONG", "SHORT")
        or str(info.get("positionIdx", "0")) in ("1", "2")
    ):
        raise HedgeModeUnsupported(
            f"{account} {raw.get('symbol')}: hedge-mode position; execq supports one-way mode only"
        )
    contracts = _decimal(raw.get("contracts")) or Decimal(0)
    side = raw.get("side")
    size = -contracts if side == "short" else contracts
    return ExchangePosition(
        account=account,
        symbol=raw["symbol"],
        size=size,
        entry_price=_decimal(raw.get("entryPrice")),
        mark_price=_decimal(raw.get("markPrice")),
    )


def fetch_positions(account: str, symbols: list[str] | None = None) -> list[ExchangePosition]:
    """Non-zero positions on ``account`` (all symbols when ``symbols`` is None).

    Writes the position cache for every symbol asked about, zero included.
    """
    client = gateway.get_client(account)
    raws: list[dict[str, Any]] = []
    if client.id == "bybit":
        if symbols is None:
            raws = read_with_retries(lambda: client.fetch_positions(None, {"settleCoin": "USDT"}))
        else:
            for symbol in symbols:
                raws.extend(read_with_retries(lambda s=symbol: client.fetch_positions([s])))
    else:
        raws = read_with_retries(lambda: client.fetch_positions(symbols))
    positions = [_parse(account, raw) for raw in raws]
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
