"""execq's own exchange errors: what a failed exchange call means for an order.

Every exchange call goes through a venue (``workers.exchange.venues``), which
translates ccxt's exceptions (and the transport's) into this small tree at one
boundary. Nothing else in execq catches a ccxt or requests exception::

    VenueError ............... an exchange call failed
    ├── NotSent .............. the request did not execute: never left, or refused before
    │   │                      execution. Sending it again cannot double anything.
    │   ├── RateLimited ...... refused for rate (429/418); ``retry_after_s`` when the
    │   │                      exchange said, and every worker backs off
    │   ├── Throttled ........ execq's own shared limiter would hold it past the caller's
    │   │                      deadline (``wait_s``); never sent
    │   └── StaleRequest ..... refused for its timestamp: it arrived after its validity
    │                          window (recvWindow), e.g. from a worker that was paused
    ├── Ambiguous ............ may have executed (a timeout after the request left, a reset,
    │                          an HTTP 5xx, an answer that could not be read)
    ├── DuplicateClientId .... the client order id is taken: the order exists
    ├── OrderNotFound ........ the exchange has no such order (a lookup, a cancel)
    ├── Refused .............. the same request gets the same answer (bad symbol, amount,
    │   │                      margin, reduce-only...): permanent for this order
    │   └── AccountRefused ... the key or its permissions: permanent for the account
    └── Unexpected ........... anything not mapped more precisely

The classes say what the order lifecycle needs (``workers.execution.lifecycle``);
each carries the venue, the operation, the exchange's own error code when it
gave one, and the original exception as ``__cause__``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from workers.execution.retry import RetryClass


class VenueError(Exception):
    """An exchange call failed. ``retry_class`` says how a retry policy treats it."""

    retry_class: ClassVar[RetryClass] = RetryClass.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        venue: str = "",
        operation: str = "",
        code: str | None = None,
        reached_exchange: bool = True,
    ) -> None:
        super().__init__(message)
        self.venue = venue
        self.operation = operation
        self.code = code
        #: False when the request provably never left this process (a refused
        #: connection, execq's own limiter): it does not count as a send.
        self.reached_exchange = reached_exchange

    def describe(self) -> str:
        """One line for events and logs: the class and the exchange's words, cut short."""
        head = type(self).__name__
        if self.code is not None:
            head += f" {self.code}"
        return f"{head}: {str(self)[:300]}"


class NotSent(VenueError):
    """The request did not execute: it never left, or was refused before execution."""

    retry_class = RetryClass.TRANSIENT


class RateLimited(NotSent):
    """Refused for rate; ``retry_after_s`` is the exchange's Retry-After when it sent one."""

    retry_class = RetryClass.RATE_LIMITED

    def __init__(self, message: str, *, retry_after_s: float | None = None, **context: Any):
        super().__init__(message, **context)
        self.retry_after_s = retry_after_s


class Throttled(NotSent):
    """execq's shared request budget would hold the request ``wait_s`` more than allowed."""

    retry_class = RetryClass.RATE_LIMITED

    def __init__(self, message: str, *, wait_s: float, **context: Any):
        super().__init__(message, reached_exchange=False, **context)
        self.wait_s = wait_s


class StaleRequest(NotSent):
    """Refused because it reached the exchange after its validity window (recvWindow)."""


class Ambiguous(VenueError):
    """The request may have executed; only a lookup can tell."""

    retry_class = RetryClass.AMBIGUOUS


class DuplicateClientId(VenueError):
    """The exchange already has an order with this client order id."""

    retry_class = RetryClass.PERMANENT


class OrderNotFound(VenueError):
    """The exchange has no order with this id (or does not show it yet)."""

    retry_class = RetryClass.PERMANENT


class Refused(VenueError):
    """A definitive refusal: the same request would get the same answer."""

    retry_class = RetryClass.PERMANENT


class AccountRefused(Refused):
    """The exchange refused the account's key or its permissions."""


class Unexpected(VenueError):
    """A failure not mapped more precisely."""

    retry_class = RetryClass.UNKNOWN


def describe(exc: BaseException) -> str:
    """One line about any failure, for events and logs."""
    if isinstance(exc, VenueError):
        return exc.describe()
    return f"{type(exc).__name__}: {str(exc)[:300]}"
