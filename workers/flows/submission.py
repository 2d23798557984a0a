"""Exactly-once submission of one order under at-least-once delivery.

The flow (ARCHITECTURE.md "The order lifecycle"):

1. the intent row is written before any exchange call (unique client order id);
2. a run that finds the order ``submitting``/``unknown`` from an earlier run
   looks it up by client order id over the visibility window before sending;
3. each failed create is classified by exception type: permanent ends the
   order ``rejected``; ambiguous (and unknown) is looked up first and only
   resent once the exchange definitely does not have it; rate-limited sets the
   cluster-wide cooldown; transient waits and resends;
4. waits that would outlast the run's deadline go back to the queue
   (``Requeue``) instead of sleeping on a worker thread.

Retry horizons: tenacity policies own the seconds inside one run, the queue
owns longer waits, and the recovery sweep owns anything still in doubt.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import ccxt
from sqlalchemy.orm import Session

from workers import redis_keys
from workers.coordination import kill_switch_state, try_lock
from workers.exchange import gateway
from workers.exchange import orders as exchange_orders
from workers.exchange.ratelimit import RateLimitWaitTooLong, set_cooldown
from workers.exchange.reads import EXCHANGE_ERRORS
from workers.execution.order_state import (
    IN_DOUBT,
    RESTING,
    TERMINAL,
    IllegalTransition,
    OrderStatus,
    status_from_exchange,
)
from workers.execution.retry import RetryClass, RetryPolicies, classify, lookup_delays, should_retry
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.orders import OrderSnapshot

logger = logging.getLogger("execq.submission")


class Requeue(Exception):
    """Come back later: the wait is longer than this run may spend."""

    def __init__(self, countdown_s: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown_s = countdown_s
        self.reason = reason


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


@dataclass
class Submission:
    """Drives one order from its stored state to a terminal (or resting) state."""

    order: OrderSnapshot
    settings: Settings
    deadline: float
    # The row was just written as ``submitting`` by this run and nothing was sent
    # yet: no earlier run can have sent it, so no lookup is needed before sending.
    fresh: bool = False
    # Runs in the transaction that makes the order terminal (``transition``'s ``then``).
    on_terminal: Callable[[Session, OrderSnapshot], Mapping[str, Any]] | None = None
    policies: RetryPolicies = field(init=False)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.policies = RetryPolicies.from_settings(self.settings.retry)

    @property
    def cid(self) -> str:
        return self.order.client_order_id

    @property
    def client(self) -> ccxt.Exchange:
        return gateway.get_client(self.order.account)

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    # --- entry ------------------------------------------------------------------------

    def run(self) -> OrderSnapshot:
        """Drive the order under its lock: one run per order at a time, cluster-wide.

        Every path that submits (order tasks, aged closes, liquidation, the
        recovery sweep's re-enqueues) goes through here, so two runs can never
        send the same client order id side by side. The lock expires soon
        after the run's budget, so a killed worker's order is not held for long.
        """
        lock = try_lock(redis_keys.order_lock(self.cid), self.settings.order_lock_ttl_s)
        if lock is None:
            raise Requeue(1.0, "another run is working on this order")
        try:
            if not self.fresh:
                self.order = order_store.load_order(self.cid) or self.order
            return self._run_locked()
        finally:
            lock.release()

    def _run_locked(self) -> OrderSnapshot:
        status = self.order.status
        if status in TERMINAL:
            return self.order
        if status in RESTING:
            return self.follow()
        if status == OrderStatus.SUBMITTING and self.fresh:
            self.fresh = False
            return self.submit()
        if status in IN_DOUBT:
            # An earlier run may have sent it: find out before sending anything.
            found = self.lookup_over_visibility_window()
            if found is not None:
                return self.adopt(found, source="lookup")
            if status == OrderStatus.UNKNOWN:
                self._move(OrderStatus.SUBMITTING, payload={"reason": "absent after lookup"})
            return self.submit()
        # intent
        if not self.order.reduce_only:
            kill = kill_switch_state()
            if kill.on:
                return self._move(
                    OrderStatus.REJECTED,
                    payload={"reason": "kill switch on", "kill_reason": kill.reason},
                    last_error_class="kill_switch",
                    last_error=f"kill switch on: {kill.reason}",
                )
        self._move(OrderStatus.SUBMITTING)
        return self.submit()

    # --- create with retry classes ----------------------------------------------------

    def submit(self) -> OrderSnapshot:
        attempts_by_class: Counter[RetryClass] = Counter()
        while True:
            try:
                response = exchange_orders.create_order(
                    self.client,
                    symbol=self.order.symbol,
                    order_type=self.order.order_type,
                    side=self.order.side,
                    amount=self.order.amount,
                    price=self.order.price,
                    client_order_id=self.cid,
                    reduce_only=self.order.reduce_only,
                    time_in_force=self.order.time_in_force,
                )
            except RateLimitWaitTooLong as exc:
                # Never sent: the shared budget is exhausted for longer than we may wait.
                raise Requeue(exc.wait_s, str(exc)) from exc
            except EXCHANGE_ERRORS as exc:
                retry_class = classify(exc, mutating=True)
                attempts_by_class[retry_class] += 1
                self.order = order_store.record_attempt(
                    self.cid,
                    retry_class=retry_class.value,
                    error=describe_error(exc),
                    outcome="error",
                )
                resolved = self._after_failed_create(exc, retry_class, attempts_by_class)
                if resolved is not None:
                    return resolved
                continue
            return self.adopt(response, source="create", accepted_attempt=True)

    def _after_failed_create(
        self, exc: BaseException, retry_class: RetryClass, attempts: Counter[RetryClass]
    ) -> OrderSnapshot | None:
        """Decide what a failed create means; None means "send again now"."""
        if retry_class == RetryClass.PERMANENT:
            return self._move(
                OrderStatus.REJECTED,
                payload={"reason": describe_error(exc)},
                last_error_class=retry_class.value,
                last_error=describe_error(exc),
            )
        if retry_class in (RetryClass.AMBIGUOUS, RetryClass.UNKNOWN):
            self._move(OrderStatus.UNKNOWN, payload={"reason": describe_error(exc)})
            found = self.lookup_over_visibility_window()
            if found is not None:
                return self.adopt(found, source="lookup")
            self._move(OrderStatus.SUBMITTING, payload={"reason": "absent after lookup"})
        if retry_class == RetryClass.RATE_LIMITED:
            wait_s = exchange_orders.retry_after_s(self.client)
            set_cooldown(
                self.order.account,
                wait_s if wait_s is not None else self.policies.for_class(retry_class).base_s,
            )
        decision = should_retry(
            retry_class,
            attempts[retry_class],
            self.policies,
            time.monotonic() - self.started,
            self.deadline - self.started,
        )
        if decision.requeue:
            raise Requeue(decision.wait_s, f"{retry_class} wait {decision.wait_s:.2f}s")
        if not decision.retry:
            order_store.record_order_event(
                self.cid,
                "order_failed",
                {
                    "retry_class": retry_class.value,
                    "attempts": attempts[retry_class],
                    "error": describe_error(exc),
                },
            )
            return self._move(
                OrderStatus.REJECTED,
                payload={"reason": f"{retry_class} retries exhausted"},
                last_error_class=retry_class.value,
                last_error=describe_error(exc),
            )
        # The policy's backoff between attempts; bounded by the run's deadline above.
        time.sleep(decision.wait_s)
        return None

    # --- lookups ----------------------------------------------------------------------

    def absent_after(self) -> datetime:
        """When a lookup that finds nothing proves the order absent.

        Measured in wall-clock time from the last moment a create may have
        reached the exchange (``submitted_at``), plus one exchange timeout (the
        request may be accepted as late as that) and the visibility window.
        Because it is stored, a run that requeues mid-window is continued by
        the next run, never restarted.
        """
        return visibility_deadline(self.order, self.settings)

    def lookup_over_visibility_window(self) -> exchange_orders.ExchangeOrder | None:
        """Look the order up by client id until found, or absent past the visibility window.

        Raises Requeue when the window ends after this run's budget: concluding
        "absent" early is how orders get doubled.
        """
        retry = self.settings.retry
        delays = iter(
            lookup_delays(retry.lookup_attempts, retry.lookup_base_s, retry.lookup_factor)
        )
        absent_after = self.absent_after()
        index = 0
        while True:
            index += 1
            try:
                found = exchange_orders.find_order_by_client_id(
                    self.client, self.order.symbol, self.cid
                )
            except EXCHANGE_ERRORS as exc:
                order_store.record_order_event(
                    self.cid,
                    "order_lookup",
                    {"attempt": index, "result": "error", "error": describe_error(exc)},
                )
            else:
                order_store.record_order_event(
                    self.cid,
                    "order_lookup",
                    {"attempt": index, "result": "found" if found else "absent"},
                )
                if found is not None:
                    return found
                if datetime.now(UTC) >= absent_after:
                    return None
            until_conclusive = (absent_after - datetime.now(UTC)).total_seconds()
            delay = max(0.05, min(next(delays, retry.lookup_base_s * 4), until_conclusive + 0.05))
            if delay > self.remaining_s():
                raise Requeue(delay, "visibility window ends after this run's budget")
            time.sleep(delay)

    # --- adopting the exchange's word -------------------------------------------------

    def adopt(
        self, seen: exchange_orders.ExchangeOrder, *, source: str, accepted_attempt: bool = False
    ) -> OrderSnapshot:
        status = status_from_exchange(seen.status, seen.amount or self.order.amount, seen.filled)
        now = datetime.now(UTC)
        fields: dict[str, Any] = {}
        if seen.id is not None:
            fields["exchange_order_id"] = str(seen.id)
        if seen.filled is not None:
            fields["filled"] = seen.filled
        if seen.average is not None and seen.filled:
            fields["average_price"] = seen.average
        if self.order.acked_at is None:
            fields["acked_at"] = now
        asked = False
        if status is None and self.order.status in IN_DOUBT:
            # Accepted, but the response does not say how it went (Bybit's create). Ask
            # at once, before writing: a market order has filled by then, and writing
            # its acceptance and its fill in one transaction saves a whole one.
            asked = True
            now_seen = self._fetch_own_order(fields.get("exchange_order_id"))
            status = self._status_of(now_seen)
            if status is None or now_seen is None:
                status = OrderStatus.OPEN
            else:
                fields |= self._fill_fields(now_seen)
        elif status is None:
            status = self.order.status
        self.order = self._move(
            status,
            payload={"source": f"{source}+follow" if asked else source},
            accepted_attempt=accepted_attempt,
            **fields,
        )
        if self.order.status in RESTING:
            return self.follow(fetch_first=not asked)
        return self.order

    def follow(self, *, fetch_first: bool = True) -> OrderSnapshot:
        """Poll a resting order until it is terminal; requeue when the run's time is up.

        ``fetch_first=False``: the exchange was asked a moment ago, so wait first.
        """
        delays = iter(lookup_delays(50, 0.25, 1.5))
        fetch = fetch_first
        while self.order.status in RESTING:
            if fetch:
                seen = self._fetch_own_order()
                status = self._status_of(seen)
                if (
                    seen is not None
                    and status is not None
                    and (status != self.order.status or (seen.filled or 0) != self.order.filled)
                ):
                    self.order = self._move(
                        status, payload={"source": "follow"}, **self._fill_fields(seen)
                    )
                    continue
            fetch = True
            delay = min(next(delays), 2.0)
            if delay > self.remaining_s():
                raise Requeue(min(2.0, max(delay, 0.5)), "order still resting")
            time.sleep(delay)
        return self.order

    def _status_of(self, seen: exchange_orders.ExchangeOrder | None) -> OrderStatus | None:
        if seen is None:
            return None
        return status_from_exchange(seen.status, seen.amount or self.order.amount, seen.filled)

    def _fill_fields(self, seen: exchange_orders.ExchangeOrder) -> dict[str, Any]:
        fields: dict[str, Any] = {"filled": seen.filled or self.order.filled}
        if seen.average is not None and seen.filled:
            fields["average_price"] = seen.average
        return fields

    def _fetch_own_order(
        self, exchange_order_id: str | None = None
    ) -> exchange_orders.ExchangeOrder | None:
        """The order as the exchange shows it now; None when not visible or the read failed."""
        try:
            return exchange_orders.fetch_own_order(
                self.client,
                self.order.symbol,
                exchange_order_id or self.order.exchange_order_id,
                self.cid,
            )
        except EXCHANGE_ERRORS as exc:
            logger.info("follow %s: %s", self.cid, describe_error(exc))
            return None

    def _move(
        self,
        target: OrderStatus,
        *,
        payload: dict | None = None,
        accepted_attempt: bool = False,
        **fields: Any,
    ):
        try:
            self.order = order_store.transition(
                self.cid,
                target,
                payload=payload,
                accepted_attempt=accepted_attempt,
                then=self.on_terminal if target in TERMINAL else None,
                **fields,
            )
        except IllegalTransition:
            # Another run moved the order on (it can only move forward): take its word.
            latest = order_store.load_order(self.cid)
            assert latest is not None
            self.order = latest
            logger.info("order %s already %s; not moving to %s", self.cid, latest.status, target)
        return self.order


def visibility_window_s(settings: Settings) -> float:
    retry = settings.retry
    return sum(lookup_delays(retry.lookup_attempts, retry.lookup_base_s, retry.lookup_factor))


def visibility_deadline(order: OrderSnapshot, settings: Settings) -> datetime:
    """The moment after which a lookup that finds nothing proves the order absent."""
    anchor = order.submitted_at or order.created_at
    return anchor + timedelta(
        seconds=settings.exchange_timeout_ms / 1000 + visibility_window_s(settings)
    )
