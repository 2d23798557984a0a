"""Waiting for an observable state: poll a condition until it holds or a deadline passes.

The one way the tests, the demo, the benchmarks and the service bootstrap wait for
something: never a fixed sleep, always a condition that returns as soon as the
state is there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NotReached(AssertionError):
    """The awaited state did not come within the deadline.

    An ``AssertionError``, so that in a test a state that never came reads as a
    failed expectation, not as an error in the test itself.
    """


def wait_for(
    condition: Callable[[], T],
    timeout_s: float,
    interval_s: float = 0.05,
    message: str = "",
    *,
    while_waiting: Callable[[], object] | None = None,
    error: Callable[[str], BaseException] = NotReached,
) -> T:
    """Poll ``condition`` every ``interval_s`` until it returns a truthy value, and return it.

    ``while_waiting`` runs after every check that failed (to show progress, or to
    raise at once when the process being waited for has died). After ``timeout_s``
    seconds, raises ``error(message)``: ``NotReached`` unless the caller names
    another exception type.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if while_waiting is not None:
            while_waiting()
        if time.monotonic() > deadline:
            raise error(message or f"condition not met within {timeout_s:g}s")
        time.sleep(interval_s)
