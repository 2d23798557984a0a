"""Plain-text tables that fit a 100-column terminal."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

WIDTH = 100


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        text = format(value.normalize(), "f")
        return text if len(text) <= 14 else format(value, ".6g")
    if isinstance(value, datetime):
        return value.strftime("%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], width: int = WIDTH) -> str:
    """Columns sized to their content; the widest columns shrink until the table fits."""
    texts = [[cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in texts:
        for index, text in enumerate(row):
            widths[index] = max(widths[index], len(text))
    while sum(widths) + 2 * (len(widths) - 1) > width and max(widths) > 6:
        widest = widths.index(max(widths))
        widths[widest] -= 1

    def line(values: Sequence[str]) -> str:
        parts = []
        for index, text in enumerate(values):
            if len(text) > widths[index]:
                text = text[: widths[index] - 1] + "…"
            parts.append(text.ljust(widths[index]))
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(row) for row in texts)
    return "\n".join(out)
