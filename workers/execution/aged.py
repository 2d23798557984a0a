"""Aged-position policy: when a position has been open too long, at what price to let it go.

Timeline of a position opened at ``opened_at`` (all durations in seconds, so
tests and the demo compress time)::

    age < max_age_s                              NONE         not aged
    max_age_s <= age < max_age_s + grace_s       GRACE        target = breakeven after commission
    age >= max_age_s + grace_s                   PROGRESSIVE  target accepts a growing loss

Choices made here, adapted from seeds 000 and 001 (the seeds are reference,
not spec):

* **Commission** is ``commission_percent`` of notional per fill, paid on the
  entry and on the exit (the round trip). Net PnL of closing at ``p`` a long
  of size ``q`` entered at ``e``: ``(p - e)q - c(e + p)q``.
* **Loss tolerance** ``t`` is the accepted *net* loss as a percent of entry
  notional, commission included. The target is the price at which net PnL is
  exactly ``-t``::

      long:  p = e (1 + c - t) / (1 - c)       (c, t as fractions)
      short: p = e (1 - c + t) / (1 + c)

  With ``t = 0`` this is the grace phase's breakeven; so the target moves
  continuously from grace into progressive. (Seed 000's
  ``entry * (1 - t - 2c)`` *subtracts* the commission for a long, so the
  realised loss exceeded the tolerance by four commissions; seed 001's grace
  target ``entry * (1 + 2c)`` falls short of breakeven by ``2c²``.) The long
  target is rounded up and the short target down, so closing at the target
  never loses more than the tolerance, however many digits the entry has.
* **Progressive steps**: the tolerance grows by ``loss_step_percent`` for
  every started ``loss_step_interval_s`` past grace (the first step applies
  on entering progressive), up to ``max_loss_percent``. Steps rather than a
  continuous ramp: the target stays fixed for a whole interval, so each price
  check compares against a target that was recorded, and the close reason
  reads ``progressive_1.5pct`` rather than ``progressive_1.4973pct``.
* **Extra tolerance** from the failure policy's widening
  (``workers.execution.aged_close``: +2 points per failure once chunks keep
  failing too) is added on top in either phase, and the total is capped at
  ``tolerance_cap_percent`` (20 %).
* **The close record** sums every fill of the episode, however many orders
  it took (``close_record``): the price is volume-weighted, the PnL the sum.
* A long closes when the price is at or above the target, a short at or below.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from enum import StrEnum
from typing import Any, Literal

from workers.execution.chunks import ceil_to_step, floor_to_step

PositionSide = Literal["long", "short"]
ZERO = Decimal(0)
HUNDRED = Decimal(100)
#: Seed 000's cap of the accepted loss, widening included.
WIDEN_CAP_PERCENT = Decimal(20)
# Enough digits that only the division rounds (in the safe direction).
_PRECISION = 34


class AgedPhase(StrEnum):
    NONE = "none"
    GRACE = "grace"
    PROGRESSIVE = "progressive"


def _decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


@dataclass(frozen=True)
class AgedPolicy:
    """The aged-position settings, frozen.

    Defaults live in ``workers.settings.AgedSettings`` (3 h to become aged,
    8 h of grace, 0.5 % per hour up to 10 %, 0.1 % commission per fill).
    """

    max_age_s: float
    grace_period_s: float
    loss_step_percent: Decimal
    loss_step_interval_s: float
    max_loss_percent: Decimal
    commission_percent: Decimal

    def __post_init__(self) -> None:
        if self.max_age_s < 0 or self.grace_period_s < 0:
            raise ValueError("max_age_s and grace_period_s must not be negative")
        if self.loss_step_interval_s <= 0:
            raise ValueError("loss_step_interval_s must be positive")
        if self.loss_step_percent < 0 or self.max_loss_percent < 0:
            raise ValueError("loss_step_percent and max_loss_percent must not be negative")
        if not ZERO <= self.commission_percent < 50:
            raise ValueError("commission_percent must be in [0, 50)")

    @classmethod
    def from_settings(cls, aged_settings: Any) -> AgedPolicy:
        """From any object with this class's attribute names (``workers.settings.AgedSettings``)."""
        return cls(
            max_age_s=float(aged_settings.max_age_s),
            grace_period_s=float(aged_settings.grace_period_s),
            loss_step_percent=_decimal(aged_settings.loss_step_percent),
            loss_step_interval_s=float(aged_settings.loss_step_interval_s),
            max_loss_percent=_decimal(aged_settings.max_loss_percent),
            commission_percent=_decimal(aged_settings.commission_percent),
        )


@dataclass(frozen=True)
class AgedAssessment:
    """Where a position stands. ``target_price`` is None when it is not aged.

    ``age_s``: seconds since it opened; ``aged_for_s``: seconds since it became
    aged (0 before); ``loss_tolerance_percent``: accepted net loss, percent of
    entry notional, extra tolerance included.
    """

    phase: AgedPhase
    target_price: Decimal | None
    loss_tolerance_percent: Decimal
    age_s: float
    aged_for_s: float


def _check_side(side: str) -> None:
    if side not in ("long", "short"):
        raise ValueError(f"side must be 'long' or 'short', got {side!r}")


def target_price(
    side: PositionSide,
    entry_price: Decimal,
    loss_tolerance_percent: Decimal,
    commission_percent: Decimal,
) -> Decimal:
    """The close price at which net PnL (after both commissions) is ``-loss_tolerance_percent``
    of entry notional; rounded up for a long and down for a short (never below 0)."""
    _check_side(side)
    with localcontext() as context:
        context.prec = _PRECISION
        c = commission_percent / HUNDRED
        t = loss_tolerance_percent / HUNDRED
        if side == "long":
            context.rounding = ROUND_CEILING
            price = entry_price * (1 + c - t) / (1 - c)
        else:
            context.rounding = ROUND_FLOOR
            price = entry_price * (1 - c + t) / (1 + c)
    return max(price, ZERO)


def breakeven_price(
    side: PositionSide, entry_price: Decimal, commission_percent: Decimal
) -> Decimal:
    """The grace target: the close price that pays back the round-trip commission."""
    return target_price(side, entry_price, ZERO, commission_percent)


def progressive_tolerance_percent(policy: AgedPolicy, past_grace_s: float) -> Decimal:
    """One ``loss_step_percent`` per started interval past grace, capped at ``max_loss_percent``."""
    if past_grace_s < 0:
        return ZERO
    steps = int(past_grace_s // policy.loss_step_interval_s) + 1
    return min(policy.loss_step_percent * steps, policy.max_loss_percent)


def _seconds_between(earlier: datetime, later: datetime) -> float:
    if earlier.tzinfo is None or later.tzinfo is None:
        raise ValueError("opened_at and now must be timezone-aware (UTC)")
    return max((later - earlier).total_seconds(), 0.0)


def assess(
    policy: AgedPolicy,
    side: PositionSide,
    entry_price: Decimal,
    opened_at: datetime,
    now: datetime,
    extra_tolerance_percent: Decimal = ZERO,
    tolerance_cap_percent: Decimal = WIDEN_CAP_PERCENT,
    *,
    price_tick: Decimal | None = None,
) -> AgedAssessment:
    """Phase, target and tolerance of a position at ``now``.

    ``price_tick`` (the market's ``precision.price``), when given, puts the
    target on the tick grid on the safe side (see :func:`quantize_price`).
    A clock that reads ``now`` before ``opened_at`` counts as age 0.
    """
    _check_side(side)
    age_s = _seconds_between(opened_at, now)
    aged_for_s = age_s - policy.max_age_s
    if aged_for_s < 0:
        return AgedAssessment(AgedPhase.NONE, None, ZERO, age_s, 0.0)
    past_grace_s = aged_for_s - policy.grace_period_s
    phase = AgedPhase.GRACE if past_grace_s < 0 else AgedPhase.PROGRESSIVE
    tolerance = progressive_tolerance_percent(policy, past_grace_s)
    tolerance = max(min(tolerance + extra_tolerance_percent, tolerance_cap_percent), ZERO)
    target = target_price(side, entry_price, tolerance, policy.commission_percent)
    if price_tick is not None:
        target = quantize_price(target, price_tick, side)
    return AgedAssessment(phase, target, tolerance, age_s, aged_for_s)


def signed_book_size(side: PositionSide | str, size: Decimal) -> Decimal:
    """The book's size with its side as the sign (long +, short −), as the exchange reports it."""
    _check_side(str(side))
    return size if str(side) == "long" else -size


def book_differs(side: PositionSide | str, book_size: Decimal, exchange_size: Decimal) -> bool:
    """Whether the exchange's signed size contradicts the book, side included: a
    position that flipped with the same absolute size is a difference too."""
    return signed_book_size(side, book_size) != exchange_size


def target_reached(side: PositionSide, price: Decimal, target: Decimal | None) -> bool:
    """A long closes at ``price >= target``, a short at ``price <= target``."""
    _check_side(side)
    if target is None:
        return False
    return price >= target if side == "long" else price <= target


def price_pnl_percent(side: PositionSide, entry_price: Decimal, close_price: Decimal) -> Decimal:
    """Price PnL of a close, percent of entry, before commission."""
    _check_side(side)
    move = close_price - entry_price if side == "long" else entry_price - close_price
    return move / entry_price * HUNDRED


def close_reason(
    side: PositionSide,
    entry_price: Decimal,
    close_price: Decimal,
    phase: AgedPhase,
    loss_tolerance_percent: Decimal,
) -> str:
    """``profitable`` when the close's price PnL is positive (seed 000 judges by price,
    before commission), else ``grace_period`` in grace, else ``progressive_<x.x>pct``.

    ``NONE`` is reported like grace: it only appears when the closing worker's
    clock trails the sweep's by a moment.
    """
    if price_pnl_percent(side, entry_price, close_price) > 0:
        return "profitable"
    if phase is not AgedPhase.PROGRESSIVE:
        return "grace_period"
    return f"progressive_{loss_tolerance_percent:.1f}pct"


def quantize_price(price: Decimal, tick: Decimal, side: PositionSide) -> Decimal:
    """``price`` on the tick grid, rounded to the safe side of a close target:
    up for a long (sell no lower), down for a short (buy back no higher)."""
    _check_side(side)
    return ceil_to_step(price, tick) if side == "long" else floor_to_step(price, tick)


@dataclass(frozen=True)
class CloseFill:
    """One order's fill in an episode's close: ``amount`` (> 0) at average ``price``,
    done at ``at`` (None when not known)."""

    amount: Decimal
    price: Decimal
    at: datetime | None = None


@dataclass(frozen=True)
class CloseRecord:
    """An episode's close over all its fills. ``price``: volume-weighted; ``pnl``: the
    sum of the fills' price PnL (quote currency, before commission, as the book
    realises it); ``pnl_percent``: over the entry notional of what was closed."""

    amount: Decimal
    price: Decimal
    pnl: Decimal
    pnl_percent: Decimal
    reason: str
    filled_at: datetime | None


def close_record(
    side: PositionSide,
    entry_price: Decimal,
    fills: list[CloseFill],
    phase: AgedPhase,
    loss_tolerance_percent: Decimal,
) -> CloseRecord:
    """The record of a close made of ``fills`` (zero fills are ignored; raises
    ``ValueError`` when nothing filled)."""
    _check_side(side)
    filled = [fill for fill in fills if fill.amount > 0]
    if not filled:
        raise ValueError("a close record needs at least one fill")
    with localcontext() as context:
        context.prec = _PRECISION
        amount = sum((fill.amount for fill in filled), ZERO)
        price = sum((fill.amount * fill.price for fill in filled), ZERO) / amount
        sign = 1 if side == "long" else -1
        pnl = sum((sign * (fill.price - entry_price) * fill.amount for fill in filled), ZERO)
        notional = entry_price * amount
        pnl_percent = pnl / notional * HUNDRED if notional else ZERO
    times = [fill.at for fill in filled if fill.at is not None]
    return CloseRecord(
        amount=amount,
        price=price,
        pnl=pnl,
        pnl_percent=pnl_percent,
        reason=close_reason(side, entry_price, price, phase, loss_tolerance_percent),
        filled_at=max(times) if times else None,
    )
