"""Whether a stream can be trusted right now, read from what its holder wrote.

Consumers (an order run waiting for a fill, verification, the aged sweep) ask
this before leaning on a stream; a stream never heard from, or silent for
longer than ``streams.stale_after_s``, is stale and they poll the exchange
as they would without streams.

Stream names: ``orders`` (order updates and fills), ``positions``, ``prices``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from workers import redis_keys
from workers.redis_client import get_redis
from workers.settings import Settings

ORDERS = "orders"
POSITIONS = "positions"
PRICES = "prices"
STREAMS = (ORDERS, POSITIONS, PRICES)


def per_stream(rows: Mapping[Any, Any]) -> dict[tuple[str, str], str]:
    """A per-stream hash as read (``STREAMS_LAST_ALIVE``, ``STREAMS_RECONNECTS``: field
    ``<account>:<stream>``) by (account, stream); fields of another shape are skipped."""
    found = {}
    for field, value in rows.items():
        name = field.decode() if isinstance(field, bytes) else str(field)
        account, _, stream = name.partition(":")
        if account and stream:
            found[(account, stream)] = value.decode() if isinstance(value, bytes) else str(value)
    return found


def stream_ages(last_alive: Mapping[Any, Any], now_s: float) -> dict[tuple[str, str], float]:
    """Seconds since each stream last showed it was alive, from ``STREAMS_LAST_ALIVE`` as
    read (values: epoch seconds); unreadable values are skipped."""
    ages = {}
    for key, alive_at in per_stream(last_alive).items():
        try:
            ages[key] = max(0.0, now_s - float(alive_at))
        except ValueError:
            continue
    return ages


def is_stale(age_s: float | None, stale_after_s: float) -> bool:
    """The one staleness verdict: never heard from, or silent for longer than the window."""
    return age_s is None or age_s > stale_after_s


def stream_age_s(account: str, stream: str) -> float | None:
    """Seconds since ``stream`` of ``account`` last delivered; None when never heard from."""
    field = redis_keys.stream_field(account, stream)
    alive_at = get_redis().hget(redis_keys.STREAMS_LAST_ALIVE, field)
    if alive_at is None:
        return None
    return stream_ages({field: alive_at}, time.time()).get((account, stream))


def stream_healthy(account: str, stream: str, settings: Settings) -> bool:
    """Whether ``stream`` of ``account`` delivered within ``streams.stale_after_s``."""
    return not is_stale(stream_age_s(account, stream), settings.streams.stale_after_s)
