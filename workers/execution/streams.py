"""The stream holder's decisions: reconnect backoff, liveness, which prices to watch, and
when a pushed price reaches an aged target. No I/O; ``workers.streams.holder`` acts on them.

**Liveness.** A stream is alive while the socket it reads from delivered *any frame*
(a data message, an answer to a subscription, or a pong) within ``stale_after_s``,
and stale after that. Counting only data messages would call a healthy idle stream
stale: a Bybit ticker stream pushes nothing while the price stands still, and a
Binance user data stream is silent while the account does not trade. So the holder
makes the socket speak: it pings every ``keepalive_interval_s`` (a third of
``stale_after_s``, so two pongs can be lost before a healthy socket looks stale) and
the exchange answers (Bybit's ``pong`` message, Binance's WebSocket pong frame). A
socket that delivers nothing at all, pongs included, is stalled or dead whatever its
TCP state says. Binance's market streams push the mark price every second anyway;
the rule needs no exception for them.

A Binance user data stream whose listen key expired keeps answering pings but will
never deliver again: that is not a liveness question, the holder reconnects as soon
as the stream says ``listenKeyExpired``.

**Stale spells.** A stream is in a stale spell from the moment it has had no evidence
of life for ``stale_after_s`` (silent socket, or no socket at all while reconnects
fail) until it is live again; the holder raises one ``stream_stale`` alert per spell.
A quick reconnect inside ``stale_after_s`` is not a spell.

**Backoff.** Reconnect ``n`` (from 1) waits ``base * 2^(n-1)`` seconds, at most the
cap, less up to half of it at random ("equal jitter": never less than half the
schedule, so a flapping exchange is not hammered, yet many holders do not redial in
step). The count starts again after a connection stayed live for ``stale_after_s``:
one that delivered for a whole stale window was a working one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from workers.execution.aged import target_reached

# The states a stream's holder writes (``execq status`` shows them).
CONNECTING = "connecting"  # first connection of this holder
RECONCILING = "reconciling"  # connected; REST reconciliation before it is trusted
LIVE = "live"
STALE = "stale"  # no evidence of life for stale_after_s
RECONNECTING = "reconnecting"  # lost; waiting out the backoff or dialling again
IDLE = "idle"  # nothing to watch (a price stream with no symbols): no socket, no age
UNSUPPORTED = "unsupported"  # the exchange has no streams execq consumes: polled as before
STATES = (CONNECTING, RECONCILING, LIVE, STALE, RECONNECTING, IDLE, UNSUPPORTED)

# The ccxt.pro client's own ping-pong watchdog fires after this many keep-alive
# intervals without a pong: twice ``stale_after_s``, so the holder's verdict, which
# raises the alert, always comes first and ccxt's is only the safety net.
CCXT_PONG_MISSES = 6.0


def keepalive_interval_s(stale_after_s: float) -> float:
    """How often the holder pings an exchange socket: a third of the stale window."""
    return stale_after_s / 3


def is_alive(now_s: float, last_frame_s: float | None, stale_after_s: float) -> bool:
    """Whether a socket whose last frame came at ``last_frame_s`` (epoch seconds; None:
    none yet) still counts as alive at ``now_s``."""
    return last_frame_s is not None and now_s - last_frame_s <= stale_after_s


def stale_spell_begins(
    now_s: float, last_evidence_s: float, stale_after_s: float, in_spell: bool
) -> bool:
    """Whether a stale spell starts now (the one moment its alert is raised): no evidence
    of life since ``last_evidence_s`` for longer than ``stale_after_s``, and not already
    in a spell."""
    return not in_spell and now_s - last_evidence_s > stale_after_s


def reconnect_delay_s(attempt: int, base_s: float, cap_s: float, jitter: float) -> float:
    """Seconds before reconnect number ``attempt`` (1 for the first after a loss).

    ``jitter`` is a uniform draw from [0, 1] made by the caller; the delay lies in
    [schedule / 2, schedule] with schedule = min(cap_s, base_s * 2^(attempt - 1)).
    Raises ``ValueError`` for an attempt below 1 or a jitter outside [0, 1].
    """
    if attempt < 1:
        raise ValueError("reconnect attempts count from 1")
    if not 0 <= jitter <= 1:
        raise ValueError("jitter is a draw from [0, 1]")
    # 2^60 seconds is beyond any cap; the exponent is bounded so it never overflows.
    schedule = min(cap_s, base_s * 2 ** min(attempt - 1, 60))
    return schedule / 2 + schedule / 2 * jitter


def next_attempt(previous_attempt: int, live_for_s: float | None, stale_after_s: float) -> int:
    """The number of the reconnect after a loss: 1 when the lost connection had stayed
    live for ``stale_after_s`` or more, else one more than ``previous_attempt``.
    ``live_for_s`` is None when the connection never became live."""
    if live_for_s is not None and live_for_s >= stale_after_s:
        return 1
    return previous_attempt + 1


def lease_renew_interval_s(lease_ttl_s: float) -> float:
    """How often a holder renews its account lease: a third of its lifetime, so two
    renewals may fail before a healthy holder loses it."""
    return lease_ttl_s / 3


def watched_symbols(
    position_symbols: Iterable[str], target_symbols: Iterable[str]
) -> tuple[str, ...]:
    """The symbols whose prices an account's price stream carries: those of its held
    positions and of its aged episodes with a target, each once, sorted."""
    return tuple(sorted(set(position_symbols) | set(target_symbols)))


class Target(Protocol):
    """An aged episode's close target as the holder knows it."""

    @property
    def aged_id(self) -> int: ...

    @property
    def side(self) -> str: ...

    @property
    def target_price(self) -> Decimal: ...


def reached_targets(targets: Iterable[Target], price: Decimal) -> tuple[int, ...]:
    """The aged episodes among ``targets`` whose target ``price`` reaches (a long's at or
    above it, a short's at or below it), by id."""
    return tuple(
        target.aged_id
        for target in targets
        if target_reached(target.side, price, target.target_price)  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class TriggerGate:
    """When the holder asks for a close again for an episode whose target a pushed price
    reached: at most once per ``retry_after_s`` per episode.

    The close itself is claimed in Postgres (a second claim is refused there), so this
    only keeps a stream of ticks past the target from asking on every tick.
    """

    retry_after_s: float

    def due(
        self, aged_ids: Iterable[int], last_asked_s: Mapping[int, float], now_s: float
    ) -> tuple[int, ...]:
        """The ids among ``aged_ids`` not asked about within ``retry_after_s``."""
        return tuple(
            aged_id
            for aged_id in aged_ids
            if now_s - last_asked_s.get(aged_id, float("-inf")) >= self.retry_after_s
        )
