"""The aged close policy after failures: one pure function says what to do next.

``next_action`` takes what is known of an episode (its size, target, failures
so far, when the last one happened, the extra tolerance already granted),
the market's amount grid and the last price, and returns one action:

===================  =============  =============================================
consecutive          wait before    next close (once the target is reached)
failures             it (defaults)
===================  =============  =============================================
0                    --             the whole position
1, 2                 1 s, 2 s       the whole position
3                    4 s            in chunks (a position too small to split:
                                    whole); ``aged_close_failing`` alert
4, 5                 8 s, 16 s      in chunks
6                    32 s           in chunks, accepted loss +2 points;
                                    ``aged_close_failing`` again (escalation)
7 .. 19              60 s (cap)     in chunks, +2 points per failure, 20 % cap
20                   --             none: give up (``aged_position_unclosable``)
any, size below      --             none: give up at once, no order can close it
the minimum order                   (``aged_position_unclosable``)
===================  =============  =============================================

The thresholds 3, 3, 6 and 20 are ``failures_before_alert``, ``_chunks``,
``_widen`` and ``_give_up`` (0: never); the wait after the n-th failure is
``backoff_base_s * 2**(n-1)``, at most ``backoff_cap_s``.

Rules that hold for every input (``tests/unit/test_aged_close.py``):

* When the target at the current tolerance is reached, no backoff is pending
  and the policy has not given up, the action is a close: nothing (a
  widening, a chunk plan that cannot help) ever replaces the close.
* After a failure the next close waits ``backoff`` (doubling from
  ``backoff_base_s`` up to ``backoff_cap_s``), however often it is asked.
* A widening is returned only when it raises the accepted loss; at the cap
  nothing is widened (no "20 -> 20").
* ``aged_close_failing`` is due at ``failures_before_alert`` failures and
  again at each later threshold (chunks, widening), once each:
  ``alerted_failures`` is the failure count of the last alert sent. Giving
  up comes with ``aged_position_unclosable`` instead.

Widening moves the target; a close already due is sent as well, so the
widening never delays it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from workers.execution.aged import PositionSide, target_reached
from workers.execution.chunks import floor_to_step, next_chunk, plan_chunks, smallest_order

ZERO = Decimal(0)
# 2^60 s is beyond any cap: no need to compute larger powers.
_MAX_DOUBLINGS = 60


class CloseAction(StrEnum):
    CLOSE_WHOLE = "close_whole"
    CLOSE_CHUNK = "close_chunk"
    #: Raise the accepted loss (the only change this time: no close is due).
    WIDEN = "widen"
    #: Backing off after a failed attempt.
    WAIT = "wait"
    #: The target is not reached: nothing to do.
    HOLD = "hold"
    GIVE_UP = "give_up"


CLOSES = frozenset({CloseAction.CLOSE_WHOLE, CloseAction.CLOSE_CHUNK})


class AlertKind(StrEnum):
    CLOSE_FAILING = "aged_close_failing"
    UNCLOSABLE = "aged_position_unclosable"


def _decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


@dataclass(frozen=True)
class CloseRules:
    """The failure policy's settings (``workers.settings.AgedSettings`` holds the defaults).

    Failure counts are consecutive failed close attempts of one episode.
    ``failures_before_give_up`` 0 never gives up. The backoff after ``n``
    failures is ``backoff_base_s * 2**(n-1)``, at most ``backoff_cap_s``: long
    enough that a refusing exchange is not hammered on every sweep, short
    enough that a passing fault costs seconds, not minutes.
    """

    failures_before_alert: int = 3
    failures_before_chunks: int = 3
    failures_before_widen: int = 6
    failures_before_give_up: int = 20
    chunk_count: int = 3
    widen_step_percent: Decimal = Decimal(2)
    widen_cap_percent: Decimal = Decimal(20)
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0

    def __post_init__(self) -> None:
        if min(self.failures_before_alert, self.failures_before_chunks) < 1:
            raise ValueError("failures_before_alert and failures_before_chunks must be >= 1")
        if self.failures_before_widen < 1 or self.failures_before_give_up < 0:
            raise ValueError("failures_before_widen must be >= 1, failures_before_give_up >= 0")
        if self.chunk_count < 2:
            raise ValueError("chunk_count must be at least 2")
        if self.widen_step_percent < 0 or not ZERO <= self.widen_cap_percent <= 100:
            raise ValueError("widen_step_percent must be >= 0, widen_cap_percent in [0, 100]")
        if self.backoff_base_s < 0 or self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_base_s must be >= 0 and <= backoff_cap_s")

    @classmethod
    def from_settings(cls, aged_settings: Any) -> CloseRules:
        return cls(
            failures_before_alert=int(aged_settings.failures_before_alert),
            failures_before_chunks=int(aged_settings.failures_before_chunks),
            failures_before_widen=int(aged_settings.failures_before_widen),
            failures_before_give_up=int(aged_settings.failures_before_give_up),
            chunk_count=int(aged_settings.chunk_count),
            widen_step_percent=_decimal(aged_settings.tolerance_widen_step_percent),
            widen_cap_percent=_decimal(aged_settings.tolerance_widen_cap_percent),
            backoff_base_s=float(aged_settings.close_backoff_base_s),
            backoff_cap_s=float(aged_settings.close_backoff_cap_s),
        )


@dataclass(frozen=True)
class AmountGrid:
    """The market's amounts: every order is a multiple of ``step`` and >= ``minimum``."""

    step: Decimal
    minimum: Decimal


@dataclass(frozen=True)
class EpisodeFacts:
    """What the policy needs of an episode.

    ``size``: the position's absolute size (the exchange's when known);
    ``target_price``: the close target at the current tolerance (None: not aged);
    ``base_tolerance_percent``: the phase schedule's accepted loss, before any
    widening; ``last_attempt_at``: when the last failed attempt ended;
    ``alerted_failures``: the failure count when ``aged_close_failing`` was last
    raised (0: never); ``chunks_closed``: chunks filled so far in this round.
    """

    side: PositionSide
    size: Decimal
    target_price: Decimal | None
    failures: int = 0
    last_attempt_at: datetime | None = None
    base_tolerance_percent: Decimal = ZERO
    extra_tolerance_percent: Decimal = ZERO
    alerted_failures: int = 0
    chunks_closed: int = 0


@dataclass(frozen=True)
class CloseDecision:
    """The next action. ``amount``: what to send, for a close; ``extra_tolerance_percent``:
    the extra accepted loss after this decision (higher than before when it widens, which
    may come with a close or a wait); ``not_before``: when a waiting close may go;
    ``alert``: an alert to raise now."""

    action: CloseAction
    extra_tolerance_percent: Decimal
    amount: Decimal | None = None
    not_before: datetime | None = None
    alert: AlertKind | None = None
    reason: str = ""

    @property
    def sends_order(self) -> bool:
        return self.action in CLOSES


def backoff_s(failures: int, rules: CloseRules) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (0 before any)."""
    if failures <= 0:
        return 0.0
    doublings = min(failures - 1, _MAX_DOUBLINGS)
    return min(rules.backoff_base_s * 2**doublings, rules.backoff_cap_s)


def retry_at(episode: EpisodeFacts, rules: CloseRules) -> datetime | None:
    """When the next close may be sent after the last failure (None: no wait)."""
    if episode.failures <= 0 or episode.last_attempt_at is None:
        return None
    return episode.last_attempt_at + timedelta(seconds=backoff_s(episode.failures, rules))


def escalation_level(failures: int, rules: CloseRules) -> int:
    """How many of the policy's thresholds ``failures`` has passed (alert, chunks, widen,
    give up): each new level is an escalation worth a new alert."""
    thresholds = {
        rules.failures_before_alert,
        rules.failures_before_chunks,
        rules.failures_before_widen,
    }
    if rules.failures_before_give_up:
        thresholds.add(rules.failures_before_give_up)
    return sum(1 for threshold in thresholds if failures >= threshold)


def close_failing_alert_due(failures: int, alerted_failures: int, rules: CloseRules) -> bool:
    """The first alert at ``failures_before_alert``, then one per escalation, never twice."""
    if failures < rules.failures_before_alert or failures <= alerted_failures:
        return False
    if alerted_failures < rules.failures_before_alert:
        return True
    return escalation_level(failures, rules) > escalation_level(alerted_failures, rules)


def _effective(base: Decimal, extra: Decimal, cap: Decimal) -> Decimal:
    return max(min(base + extra, cap), ZERO)


def widened_extra(episode: EpisodeFacts, rules: CloseRules) -> Decimal:
    """The extra tolerance due after ``episode.failures`` failures.

    One ``widen_step_percent`` per failure from ``failures_before_widen`` on,
    never beyond what takes the total to ``widen_cap_percent``. Returns the
    current extra when that would not raise the accepted loss.
    """
    current = episode.extra_tolerance_percent
    if episode.failures < rules.failures_before_widen:
        return current
    steps = episode.failures - rules.failures_before_widen + 1
    due = min(rules.widen_step_percent * steps, rules.widen_cap_percent)
    room = max(rules.widen_cap_percent - episode.base_tolerance_percent, current)
    proposed = min(max(current, due), room)
    base, cap = episode.base_tolerance_percent, rules.widen_cap_percent
    if _effective(base, proposed, cap) <= _effective(base, current, cap):
        return current
    return proposed


def _close(
    episode: EpisodeFacts, grid: AmountGrid, rules: CloseRules
) -> tuple[CloseAction, Decimal]:
    on_grid = floor_to_step(abs(episode.size), grid.step)
    if episode.failures >= rules.failures_before_chunks:
        if episode.chunks_closed > 0:
            chunks_left = rules.chunk_count - episode.chunks_closed
            return CloseAction.CLOSE_CHUNK, next_chunk(
                on_grid, chunks_left, grid.step, grid.minimum
            )
        plan = plan_chunks(on_grid, rules.chunk_count, grid.step, grid.minimum)
        if plan.can_help:
            return CloseAction.CLOSE_CHUNK, plan.chunks[0]
    return CloseAction.CLOSE_WHOLE, on_grid


def next_action(
    episode: EpisodeFacts,
    grid: AmountGrid,
    price: Decimal | None,
    now: datetime,
    rules: CloseRules,
) -> CloseDecision:
    """What to do with an aged episode now; ``price`` None when no price was read.

    Pure: the caller applies the decision (sends the close, writes the
    widening, raises the alert and records ``alerted_failures``).
    """
    extra = episode.extra_tolerance_percent
    on_grid = floor_to_step(abs(episode.size), grid.step)
    if on_grid < smallest_order(grid.step, grid.minimum):
        return CloseDecision(
            CloseAction.GIVE_UP,
            extra,
            alert=AlertKind.UNCLOSABLE,
            reason=f"size {abs(episode.size)} is below the market's minimum order size "
            f"{smallest_order(grid.step, grid.minimum)}",
        )
    if rules.failures_before_give_up and episode.failures >= rules.failures_before_give_up:
        return CloseDecision(
            CloseAction.GIVE_UP,
            extra,
            alert=AlertKind.UNCLOSABLE,
            reason=f"{episode.failures} consecutive close failures",
        )
    alert = (
        AlertKind.CLOSE_FAILING
        if close_failing_alert_due(episode.failures, episode.alerted_failures, rules)
        else None
    )
    widened = widened_extra(episode, rules)
    widening = widened != extra
    resume_at = retry_at(episode, rules)
    if resume_at is not None and now < resume_at:
        return CloseDecision(
            CloseAction.WIDEN if widening else CloseAction.WAIT,
            widened,
            not_before=resume_at,
            alert=alert,
            reason=f"backing off after {episode.failures} failures",
        )
    if price is None or not target_reached(episode.side, price, episode.target_price):
        return CloseDecision(
            CloseAction.WIDEN if widening else CloseAction.HOLD,
            widened,
            alert=alert,
            reason="target not reached" if price is not None else "no price",
        )
    action, amount = _close(episode, grid, rules)
    return CloseDecision(
        action,
        widened,
        amount=amount,
        alert=alert,
        reason=f"target reached after {episode.failures} failures",
    )
