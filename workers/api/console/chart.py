"""The aged episode's chart: price against target over time, as SVG geometry.

Pure: it takes points and returns coordinates in a fixed viewBox, which the
template draws as polylines (the page scales it to its width). The target is a
step line (it holds until the next change); the price is the line through its
observations; crossings and closes are marked. Nothing is interpolated or
smoothed: a gap between observations is a straight segment between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

WIDTH = 600
HEIGHT = 220
# Room for the price labels on the left and the times below.
LEFT, RIGHT, TOP, BOTTOM = 64, 8, 10, 24


@dataclass(frozen=True)
class Point:
    at: datetime
    value: Decimal


@dataclass(frozen=True)
class Marker:
    at: datetime
    value: Decimal
    label: str


@dataclass(frozen=True)
class PlacedMarker:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    """What the template draws; ``empty`` when there is nothing to draw."""

    width: int
    height: int
    price_points: str
    target_points: str
    markers: tuple[PlacedMarker, ...]
    # The newest price, drawn as a dot (a single observation is visible too).
    last: PlacedMarker | None
    price_count: int
    low: Decimal
    high: Decimal
    start: datetime
    end: datetime
    # The plot area, for the frame and the axis labels.
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM

    @property
    def empty(self) -> bool:
        return not self.price_points and not self.target_points


def price_against_target(
    prices: Sequence[Point],
    targets: Sequence[Point],
    markers: Sequence[Marker],
    start: datetime,
    end: datetime,
) -> Chart:
    """The chart of ``prices`` and the step line of ``targets`` between ``start`` and
    ``end`` (points outside are dropped; the target in force at ``start`` is kept)."""
    prices = sorted((p for p in prices if start <= p.at <= end), key=lambda p: p.at)
    markers = [m for m in markers if start <= m.at <= end]
    targets = _targets_in_window(targets, start, end)
    values = [p.value for p in prices] + [t.value for t in targets] + [m.value for m in markers]
    if not values:
        return Chart(WIDTH, HEIGHT, "", "", (), None, 0, Decimal(0), Decimal(0), start, end)
    low, high = min(values), max(values)
    pad = (high - low) * Decimal("0.08") if high > low else abs(high) * Decimal("0.005") or 1
    low, high = low - pad, high + pad
    span_s = max((end - start).total_seconds(), 1e-3)

    def x(at: datetime) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * (at - start).total_seconds() / span_s

    def y(value: Decimal) -> float:
        share = float((value - low) / (high - low))
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - share)

    price_points = " ".join(f"{x(p.at):.1f},{y(p.value):.1f}" for p in prices)
    steps: list[str] = []
    for index, target in enumerate(targets):
        until = targets[index + 1].at if index + 1 < len(targets) else end
        steps.append(f"{x(target.at):.1f},{y(target.value):.1f}")
        steps.append(f"{x(until):.1f},{y(target.value):.1f}")
    placed = tuple(PlacedMarker(round(x(m.at), 1), round(y(m.value), 1), m.label) for m in markers)
    last = None
    if prices:
        newest = prices[-1]
        last = PlacedMarker(round(x(newest.at), 1), round(y(newest.value), 1), f"{newest.value}")
    return Chart(
        WIDTH,
        HEIGHT,
        price_points,
        " ".join(steps),
        placed,
        last,
        len(prices),
        low,
        high,
        start,
        end,
    )


def _targets_in_window(targets: Sequence[Point], start: datetime, end: datetime) -> list[Point]:
    ordered = sorted(targets, key=lambda t: t.at)
    before = [t for t in ordered if t.at < start]
    inside = [t for t in ordered if start <= t.at <= end]
    if before and (not inside or inside[0].at > start):
        inside.insert(0, Point(start, before[-1].value))
    return inside
