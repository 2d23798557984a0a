"""Partial-close plans: split a position that will not close in one order into valid chunks.

Seed 000's fallback after repeated close failures: close in ``chunk_count``
chunks (default 3), the last taking the remainder. The seed divided by 3 in
floats and sent whatever came out; exchanges reject amounts off their step
grid or under their minimum, so here every chunk is rounded *down* to the
market's amount step (``precision.amount`` in ccxt's TICK_SIZE mode, e.g.
0.001) and is at least the market's minimum amount. Fewer chunks are planned
when the position is too small for ``chunk_count`` valid ones; when not even
two fit, chunking cannot help and the caller widens the loss tolerance
instead (``aged.widen_tolerance``).

Decimal arithmetic here runs in an 80-digit context so that ``value % step``
is exact for any amount a market can carry; rounding down never rounds up by
accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow, localcontext

_EXACT = Context(prec=80, traps=[InvalidOperation, DivisionByZero, Overflow])
ZERO = Decimal(0)


def _check_step(step: Decimal) -> None:
    if not step.is_finite() or step <= 0:
        raise ValueError(f"step must be a positive finite decimal, got {step}")


def floor_to_step(value: Decimal, step: Decimal) -> Decimal:
    """The largest multiple of ``step`` that is <= ``value`` (``value`` >= 0)."""
    _check_step(step)
    if value < 0:
        raise ValueError(f"value must not be negative, got {value}")
    with localcontext(_EXACT):
        return value - value % step


def ceil_to_step(value: Decimal, step: Decimal) -> Decimal:
    """The smallest multiple of ``step`` that is >= ``value`` (``value`` >= 0)."""
    floor = floor_to_step(value, step)
    if floor == value:
        return floor
    with localcontext(_EXACT):
        return floor + step


def smallest_order(amount_step: Decimal, min_amount: Decimal) -> Decimal:
    """The smallest amount a valid order can have on this market."""
    # A minimum off the step grid (rare, but markets are data) is reachable only
    # at the next step up; a zero minimum still needs one step to be an order.
    return max(ceil_to_step(max(min_amount, ZERO), amount_step), amount_step)


@dataclass(frozen=True)
class ChunkPlan:
    """How to close a position in pieces.

    ``chunks``: amounts to send in order, each on the step grid and >= the
    minimum; empty when chunking cannot help. ``remainder``: the part of the
    size below one step that no order can close (0 when the size is on the grid).
    """

    chunks: tuple[Decimal, ...]
    can_help: bool
    reason: str
    remainder: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        with localcontext(_EXACT):
            return sum(self.chunks, ZERO)


def plan_chunks(
    size: Decimal, chunk_count: int, amount_step: Decimal, min_amount: Decimal
) -> ChunkPlan:
    """Split ``size`` (absolute, base units) into at most ``chunk_count`` valid chunks.

    Every chunk but the last is the same amount, rounded down to the step; the
    last takes the rest, so the chunks add up to ``size`` exactly when ``size``
    is on the step grid. Needs at least two chunks to help: one chunk is the
    single close that already failed.
    """
    if chunk_count < 1:
        raise ValueError(f"chunk_count must be at least 1, got {chunk_count}")
    size = abs(size)
    on_grid = floor_to_step(size, amount_step)
    with localcontext(_EXACT):
        remainder = size - on_grid
    minimum = smallest_order(amount_step, min_amount)
    note = f"; {remainder} below one step {amount_step} cannot be closed" if remainder else ""
    if on_grid <= min_amount or on_grid < minimum:
        return ChunkPlan(
            (),
            False,
            f"size {size} is at or below the minimum amount {min_amount}{note}",
            remainder,
        )
    with localcontext(_EXACT):
        count = min(chunk_count, int(on_grid // minimum))
    if count < 2:
        return ChunkPlan(
            (),
            False,
            f"size {size} cannot be split into 2 chunks of at least {minimum}{note}",
            remainder,
        )
    with localcontext(_EXACT):
        each = floor_to_step(on_grid / count, amount_step)
        last = on_grid - each * (count - 1)
    chunks = (each,) * (count - 1) + (last,)
    return ChunkPlan(chunks, True, f"{count} chunks of about {each}{note}", remainder)


def next_chunk(
    remaining: Decimal, chunks_left: int, amount_step: Decimal, min_amount: Decimal
) -> Decimal:
    """The amount to send next after re-reading the position between chunks.

    Plans afresh from what is really left (another fill, a liquidation or a
    lagging read may have changed it). With one chunk left, or when what is
    left cannot be split, it is everything on the step grid. Returns 0 when
    what is left on the grid is below the minimum: no valid order can close it.
    """
    on_grid = floor_to_step(abs(remaining), amount_step)
    if on_grid < smallest_order(amount_step, min_amount):
        return ZERO
    if chunks_left <= 1:
        return on_grid
    plan = plan_chunks(on_grid, chunks_left, amount_step, min_amount)
    return plan.chunks[0] if plan.can_help else on_grid
