"""Reads from the exchange, retried by their retry class.

A read (markets, tickers, positions, an order lookup) is safe to repeat, so
every network-ish failure is retried as ``transient`` (``classify`` with
``mutating=False``), rate limits with their own policy, and permanent errors
surface at once. The total wait is bounded by ``budget_s`` so a read never
holds a task past its deadline.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import ccxt
import requests

from workers.exchange.ratelimit import RateLimitWaitTooLong
from workers.execution.retry import RetryClass, RetryPolicies, classify, should_retry
from workers.settings import get_settings

T = TypeVar("T")

EXCHANGE_ERRORS = (ccxt.BaseError, requests.RequestException, RateLimitWaitTooLong)

DEFAULT_READ_BUDGET_S = 8.0


def read_with_retries(call: Callable[[], T], budget_s: float = DEFAULT_READ_BUDGET_S) -> T:
    """``call()``, retried per its retry class within ``budget_s``; the last error surfaces."""
    policies = RetryPolicies.from_settings(get_settings().retry)
    attempts: Counter[RetryClass] = Counter()
    started = time.monotonic()
    while True:
        try:
            return call()
        except RateLimitWaitTooLong as exc:
            elapsed = time.monotonic() - started
            if elapsed + exc.wait_s > budget_s:
                raise
            time.sleep(exc.wait_s)
        except (ccxt.BaseError, requests.RequestException) as exc:
            retry_class = classify(exc, mutating=False)
            attempts[retry_class] += 1
            decision = should_retry(
                retry_class,
                attempts[retry_class],
                policies,
                time.monotonic() - started,
                budget_s,
            )
            if not decision.retry:
                raise
            time.sleep(decision.wait_s)
