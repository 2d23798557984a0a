"""Whether a stream can be trusted right now, read from what its holder wrote.

Consumers (an order run waiting for a fill, verification, the aged sweep) ask
this before leaning on a stream; a stream never heard from, or silent for
longer than ``streams.stale_after_s``, is stale and they poll the exchange
as they would without streams.

Stream names: ``orders`` (order updates and fills), ``positions``, ``prices``.
"""

from __future__ import annotations

import time

from workers import redis_keys
from workers.redis_client import get_redis
from workers.settings import Settings

ORDERS = "orders"
POSITIONS = "positions"
PRICES = "prices"
STREAMS = (ORDERS, POSITIONS, PRICES)


def stream_age_s(account: str, stream: str) -> float | None:
    """Seconds since ``stream`` of ``account`` last delivered; None when never heard from."""
    alive_at = get_redis().hget(
        redis_keys.STREAMS_LAST_ALIVE, redis_keys.stream_field(account, stream)
    )
    if alive_at is None:
        return None
    return max(0.0, time.time() - float(alive_at))


def stream_healthy(account: str, stream: str, settings: Settings) -> bool:
    """Whether ``stream`` of ``account`` delivered within ``streams.stale_after_s``."""
    age_s = stream_age_s(account, stream)
    return age_s is not None and age_s <= settings.streams.stale_after_s
