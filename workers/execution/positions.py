"""Position book math: what a verified fill does to a one-way position, and its PnL.

A position is one signed size per (account, symbol): positive long, negative
short (one-way mode; hedge mode is refused before it reaches here). Amounts
are base units (contracts), prices quote per base unit, PnL in quote currency.

* Increasing: the entry becomes the size-weighted average of old entry and fill.
* Reducing: PnL is realised on the closed part at the entry; the entry stays.
* Flipping (a fill larger than the position): close all, then open the rest
  at the fill price.
* Closing to zero: the entry resets to 0 (there is nothing left to price).

PnL follows seed 002: long ``(price - entry) * size``, short
``(entry - price) * |size|``; ROI is PnL over entry notional, in percent.
Leverage does not change PnL in quote currency, so it is not an input here.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Literal

ZERO = Decimal(0)
HUNDRED = Decimal(100)
# Weighted averages divide; 34 digits keeps rounding far below any exchange tick.
_PRECISION = 34

FillSide = Literal["buy", "sell"]
PositionSide = Literal["long", "short"]


@dataclass(frozen=True)
class PositionState:
    """``size`` signed (+ long, - short); ``entry_price`` 0 when flat; ``realized_pnl``
    accumulated in quote currency, fees deducted."""

    size: Decimal = ZERO
    entry_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO

    @property
    def side(self) -> PositionSide | None:
        return side_of(self.size)

    @property
    def is_flat(self) -> bool:
        return self.size == 0


def side_of(size: Decimal) -> PositionSide | None:
    if size > 0:
        return "long"
    if size < 0:
        return "short"
    return None


def _signed(side: str, amount: Decimal) -> Decimal:
    if side == "buy":
        return amount
    if side == "sell":
        return -amount
    raise ValueError(f"side must be 'buy' or 'sell', got {side!r}")


def _realized(size: Decimal, entry: Decimal, price: Decimal, closed: Decimal) -> Decimal:
    """PnL of closing ``closed`` (absolute) of a position of signed ``size`` at ``price``."""
    return (price - entry) * closed if size > 0 else (entry - price) * closed


def apply_fill(
    state: PositionState,
    side: FillSide,
    amount: Decimal,
    price: Decimal,
    fee: Decimal = ZERO,
) -> PositionState:
    """The position after a fill of ``amount`` (> 0) at ``price`` (> 0); ``fee`` in quote
    currency is deducted from realised PnL. Raises ``ValueError`` on nonsense input."""
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"amount must be positive, got {amount}")
    if not price.is_finite() or price <= 0:
        raise ValueError(f"price must be positive, got {price}")
    delta = _signed(side, amount)
    size, entry = state.size, state.entry_price
    realized = state.realized_pnl - fee
    with localcontext() as context:
        context.prec = _PRECISION
        if size == 0 or (size > 0) == (delta > 0):
            new_size = size + delta
            new_entry = (abs(size) * entry + amount * price) / abs(new_size)
            return PositionState(new_size, new_entry, realized)
        closed = min(amount, abs(size))
        realized += _realized(size, entry, price, closed)
        new_size = size + delta
        if new_size == 0:
            return PositionState(ZERO, ZERO, realized)
        if (new_size > 0) == (size > 0):
            return PositionState(new_size, entry, realized)
        return PositionState(new_size, price, realized)


def unrealized_pnl(state: PositionState, price: Decimal) -> Decimal:
    """Long ``(price - entry) * size``, short ``(entry - price) * |size|``; 0 when flat."""
    if state.size == 0:
        return ZERO
    with localcontext() as context:
        context.prec = _PRECISION
        return _realized(state.size, state.entry_price, price, abs(state.size))


def roi_percent(state: PositionState, price: Decimal) -> Decimal:
    """Unrealised PnL over entry notional (``entry * |size|``), in percent; 0 when flat."""
    notional = state.entry_price * abs(state.size)
    if notional == 0:
        return ZERO
    with localcontext() as context:
        context.prec = _PRECISION
        return unrealized_pnl(state, price) / notional * HUNDRED
