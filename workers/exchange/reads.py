"""Reads from the exchange (markets, tickers, positions, lookups), retried by their class.

A read is safe to repeat, so an ambiguous failure is retried like a transient
one, rate limits with their own policy, and definitive answers surface at once.
The total wait is bounded by ``budget_s`` so that a read never holds a task past
its deadline; the last ``VenueError`` surfaces when it runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from workers.execution.retry import RetryPolicies
from workers.retrying import read
from workers.settings import get_settings

T = TypeVar("T")

DEFAULT_READ_BUDGET_S = 8.0


def read_with_retries(call: Callable[[], T], budget_s: float = DEFAULT_READ_BUDGET_S) -> T:
    """``call()`` (a venue read), retried per its retry class within ``budget_s``."""
    return read(call, policies=RetryPolicies.from_settings(get_settings().retry), budget_s=budget_s)
