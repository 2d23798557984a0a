"""What the console computes from stored values, with no I/O: rate-limit headroom,
distance to an aged target, stream health, a position's unrealised PnL."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from workers.exchange.ratelimit import RateLimit
from workers.execution.aged import target_reached
from workers.execution.positions import PositionState, roi_percent, unrealized_pnl
from workers.streams.health import is_stale, stream_ages

HUNDRED = Decimal(100)


def rate_limit_headroom(tat_ms: float | None, now_ms: float, limit: RateLimit) -> float:
    """Weight units the shared limiter would grant at once now (0 to ``limit.burst``).

    The limiter (``workers.exchange.ratelimit``, GCRA) stores a theoretical arrival
    time ``tat_ms``; a request of weight ``w`` goes when ``tat + w * interval - burst
    <= now``, so ``(now + burst - tat) / interval`` units are free. No stored time
    (expired, or never used) is a full bucket.
    """
    if tat_ms is None or tat_ms <= now_ms:
        return float(limit.burst)
    free = (now_ms + limit.burst_ms - tat_ms) / limit.interval_ms
    return max(0.0, min(float(limit.burst), free))


@dataclass(frozen=True)
class Distance:
    """How far the price is from an aged episode's close target.

    ``move`` is ``target - price``: positive when the price must rise to reach it,
    negative when it must fall; ``percent`` is that move over the price. ``reached``
    follows the close rule (a long at ``price >= target``, a short at ``<=``).
    """

    move: Decimal
    percent: Decimal
    reached: bool


def distance_to_target(side: str, price: Decimal | None, target: Decimal | None) -> Distance | None:
    """None when the price or the target is not known (or the price is not positive)."""
    if price is None or target is None or price <= 0:
        return None
    move = target - price
    return Distance(
        move=move,
        percent=(move / price * HUNDRED).quantize(Decimal("0.001")),
        reached=target_reached(side, price, target),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class StreamHealth:
    stream: str
    age_s: float
    stale: bool


def stream_health(
    last_alive: dict[str, str], account: str, now_s: float, stale_after_s: float
) -> list[StreamHealth]:
    """The account's streams from the ``record_stream_alive`` hash (field
    ``<account>:<stream>``, value epoch seconds), by name; empty when it has none. Stale
    as every consumer judges it (``workers.streams.health.is_stale``)."""
    return [
        StreamHealth(stream, age_s, is_stale(age_s, stale_after_s))
        for (owner, stream), age_s in sorted(stream_ages(last_alive, now_s).items())
        if owner == account
    ]


@dataclass(frozen=True)
class Unrealised:
    pnl: Decimal
    roi_percent: Decimal


def unrealised(side: str, size: Decimal, entry: Decimal, mark: Decimal | None) -> Unrealised | None:
    """PnL at ``mark`` of a book position (``size`` as stored: not signed, ``side``
    long or short), with the book's own math; None without a mark."""
    if mark is None:
        return None
    state = PositionState(size=size if side == "long" else -size, entry_price=entry)
    return Unrealised(
        pnl=unrealized_pnl(state, mark),
        roi_percent=roi_percent(state, mark).quantize(Decimal("0.01")),
    )
