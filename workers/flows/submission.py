"""Exactly-once submission of one order under at-least-once delivery.

Every path that places an order (the order tasks, aged closes, liquidation,
the recovery sweep's re-enqueues) drives it through :class:`Submission`, which
does the I/O and asks the lifecycle core (``workers.execution.lifecycle``)
what each answer means:

1. A run holds the order's **lease** (a Redis lock on its client order id)
   from before it reads the order until it is done. A twin delivery of the
   same signal waits for it, then reads the outcome; it never searches the
   visibility window because of its twin.
2. Right before every create the run reads the kill switch (for orders that
   are not reduce-only) and whether the exchange refused the account's key,
   and signs the request valid only until its lease expires (**fencing**,
   :func:`workers.execution.lifecycle.signing_window_ms`): a run paused past
   its lease has its late request refused by the exchange, never doubled.
3. Creates are retried in place only where a retry cannot double the order
   (the failure did not execute, or the exchange refuses a reused client id),
   through the one retry executor (``workers.retrying``); waits longer than
   the run's budget go back to the queue (:class:`Requeue`).
4. An outcome in doubt is looked up by client order id over the visibility
   window; not seen past it, an open is ``unknown`` with a critical alert and
   is left to the recovery sweep, never resent where that could double it.
5. A resting order ends the run: the tracking sweep (or a stream) follows it.

The orders stream (``workers.flows.stream_updates``) hands the run what it
pushes about the order while the run holds its lease. A create answered
without a status (Bybit) waits up to ``streams.fill_wait_s`` for that word
while the stream is healthy, and fetches once by REST only when none settles
it; a word handed over during the lookups counts as seen; whatever is left is
recorded before the run lets go, and a word handed over as it lets go is
recorded right after (``order_lease``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from workers import redis_keys
from workers.coordination import (
    Lock,
    SendGuard,
    now_ms,
    refuse_account,
    send_guard,
    try_lock,
)
from workers.exchange import gateway
from workers.exchange.errors import (
    AccountRefused,
    Ambiguous,
    DuplicateClientId,
    NotSent,
    RateLimited,
    Refused,
    Unexpected,
    VenueError,
)
from workers.exchange.ratelimit import set_cooldown
from workers.exchange.venues.base import ExchangeOrder, OrderRequest, SigningWindow, Venue
from workers.execution import lifecycle
from workers.execution.order_state import (
    IN_DOUBT,
    TERMINAL,
    IllegalTransition,
    OrderStatus,
)
from workers.execution.retry import RetryPolicies, lookup_delays
from workers.retrying import Requeue, call_with_retries, poll
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.orders import OrderSnapshot
from workers.streams.health import ORDERS, stream_healthy

__all__ = [
    "LeaseLost",
    "Requeue",
    "Submission",
    "lifecycle_timing",
    "order_lease",
    "record_sighting",
    "release_order_lease",
]

logger = logging.getLogger("execq.submission")

# Seconds a run waits for a twin's lease on the same order before it goes back to the queue.
LEASE_WAIT_S = 10.0


class LeaseLost(Exception):
    """The run's lease on the order expired or was taken over: it must not send any more."""


class _Blocked(Exception):
    """A create was stopped before it left (the kill switch, a refused account)."""

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason


def lifecycle_timing(settings: Settings) -> lifecycle.Timing:
    """The lifecycle's horizons from the settings."""
    retry = settings.retry
    lookups_s = sum(lookup_delays(retry.lookup_attempts, retry.lookup_base_s, retry.lookup_factor))
    return lifecycle.Timing(
        # A create may be accepted as late as one request timeout after it was sent.
        visibility_window_s=settings.exchange_timeout_ms / 1000 + lookups_s,
        give_up_after_s=settings.unknown_give_up_s,
        resend_max_age_s=settings.recovery_resubmit_max_age_s,
        max_sends=settings.order_max_sends,
    )


@contextmanager
def order_lease(client_order_id: str, settings: Settings, deadline: float) -> Iterator[Lock]:
    """Hold the order's lease for the block, waiting a moment for a run that holds it.

    Raises :class:`Requeue` when it stays taken (the holder is working on it, or died and
    its lease has not expired yet).
    """
    key = redis_keys.order_lock(client_order_id)

    def take() -> Lock | None:
        return try_lock(key, settings.order_lock_ttl_s)

    lease = take() or poll(
        take,
        delays_s=lambda attempt: min(0.02 * 2**attempt, 0.25),
        until=lambda: False,
        deadline=min(deadline, time.monotonic() + LEASE_WAIT_S),
    )
    if lease is None:
        raise Requeue(1.0, "another run holds this order")
    try:
        yield lease
    finally:
        release_order_lease(lease, client_order_id, settings)


def release_order_lease(lease: Lock, client_order_id: str, settings: Settings) -> str | None:
    """Let go of the order's lease, then record what a stream handed over meanwhile.

    An update pushed while the lease was held went to the holder's list; one that came
    as the holder let go would otherwise wait for the next update or sweep. Returns
    what recording them did (``record_handed_updates``), None when there were none.
    """
    if not lease.release_peeking(redis_keys.stream_order_updates(client_order_id)):
        return None
    # stream_updates builds on this module: imported when first needed.
    from workers.flows import stream_updates

    return stream_updates.record_handed_updates(client_order_id, settings)


@dataclass
class Submission:
    """Drives one order from its stored state to an outcome the lifecycle core accepts.

    ``fresh``: this run wrote the row as ``submitting`` under its lease and nothing was
    sent yet. ``lease``: held by the caller (else ``run`` takes it). ``guard``: the kill
    switch and the account's standing, read by the caller a moment ago, for the first
    send. ``on_terminal`` runs in the transaction that makes the order terminal and
    returns more columns for its row.
    """

    order: OrderSnapshot
    settings: Settings
    deadline: float
    on_terminal: Callable[[Session, OrderSnapshot], Mapping[str, Any]] | None = None
    fresh: bool = False
    lease: Lock | None = None
    guard: SendGuard | None = None
    venue: Venue = field(init=False)
    policies: RetryPolicies = field(init=False)
    timing: lifecycle.Timing = field(init=False)
    possibly_sent: bool = field(init=False)
    known_to_exist: bool = False
    # Why this run may not send any more (a refusal, the kill switch, spent retries).
    blocked: str | None = None
    # A create's answer not yet written: recorded with the status it leads to.
    accepted: ExchangeOrder | None = None
    # A stream holder may hand this run order updates (unknown without a guard: it may).
    # Without one the run does not look for them; one that starts meanwhile has its
    # updates recorded as the run lets go of the lease (``release_order_lease``).
    stream_may_hand_over: bool = field(init=False)

    def __post_init__(self) -> None:
        self.stream_may_hand_over = self.guard is None or self.guard.streams_held
        self.venue = gateway.venue(self.order.account)
        self.policies = RetryPolicies.from_settings(self.settings.retry)
        self.timing = lifecycle_timing(self.settings)
        self.possibly_sent = self.order.status in IN_DOUBT and not self.fresh

    @property
    def cid(self) -> str:
        return self.order.client_order_id

    # --- entry -----------------------------------------------------------------------

    def run(self) -> OrderSnapshot:
        """Drive the order under its lease; raises :class:`Requeue` to come back later."""
        if self.lease is not None:
            return self._drive_or_requeue()
        with order_lease(self.cid, self.settings, self.deadline) as lease:
            self.lease = lease
            self.order = order_store.load_order(self.cid) or self.order
            self.possibly_sent = self.order.status in IN_DOUBT
            try:
                return self._drive_or_requeue()
            finally:
                self.lease = None

    def _drive_or_requeue(self) -> OrderSnapshot:
        try:
            self._drive()
            return self._record_stream_updates() if self.stream_may_hand_over else self.order
        except Requeue:
            if self.order.status == OrderStatus.SUBMITTING and not self.possibly_sent:
                # Nothing of it left: the next run sends it without a lookup.
                self._move(OrderStatus.INTENT, payload={"reason": "not sent; coming back later"})
            raise

    def facts(self) -> lifecycle.OrderFacts:
        order = self.order
        return lifecycle.OrderFacts(
            status=order.status,
            order_type=order.order_type,
            reduce_only=order.reduce_only,
            amount=order.amount,
            created_at=order.created_at,
            sent_at=order.submitted_at if self.possibly_sent else None,
            possibly_sent=self.possibly_sent,
            accepted=order.acked_at is not None or self.accepted is not None,
            known_to_exist=self.known_to_exist,
            alerted=order.alerted_at is not None,
            sends=order.attempts,
            blocked=self.blocked,
            filled=order.filled,
        )

    def _drive(self) -> OrderSnapshot:
        observation: lifecycle.Observation = lifecycle.Taken()
        traits = self.venue.traits
        while True:
            step = lifecycle.decide(
                self.facts(), observation, traits, datetime.now(UTC), self.timing
            )
            match step:
                case lifecycle.Send():
                    observation = self._send()
                case lifecycle.LookUp(mark_unknown=mark_unknown):
                    if mark_unknown:
                        self._move(OrderStatus.UNKNOWN, payload={"reason": "outcome in doubt"})
                    observation = self.look_up()
                case lifecycle.FetchOnce():
                    observation = self._fetch_once()
                case lifecycle.Adopt(status=status, seen=seen):
                    return self.adopt(status, seen, source=_source_of(observation))
                case lifecycle.StayUnknown(alert=alert):
                    return self.stay_unknown(alert)
                case lifecycle.GiveUp(reason=reason):
                    return self.give_up(reason)
                case lifecycle.Reject(error_class=error_class, reason=reason):
                    return self._move(
                        OrderStatus.REJECTED,
                        payload={"reason": reason},
                        last_error_class=error_class,
                        last_error=reason,
                    )
                case lifecycle.Done():
                    return self.order

    # --- send ------------------------------------------------------------------------

    def _request(self) -> OrderRequest:
        order = self.order
        return OrderRequest(
            symbol=order.symbol,
            order_type=order.order_type,
            side=order.side,
            amount=order.amount,
            price=order.price,
            client_order_id=self.cid,
            reduce_only=order.reduce_only,
            time_in_force=order.time_in_force,
        )

    def _send(self) -> lifecycle.Observation:
        request = self._request()

        def attempt() -> ExchangeOrder:
            self._check_may_send()
            if self.order.status != OrderStatus.SUBMITTING:
                reason = "resend" if self.order.status == OrderStatus.UNKNOWN else None
                self._move(OrderStatus.SUBMITTING, payload={"reason": reason} if reason else None)
            signing = self._signing_window()
            try:
                return self.venue.create_order(request, signing)
            except VenueError as exc:
                self._record_failed_attempt(exc)
                raise

        try:
            created = call_with_retries(
                attempt,
                policies=self.policies,
                deadline=self.deadline,
                retry_if=self._may_retry_create,
                mutating=True,
                before_sleep=self._before_retry,
            )
        except _Blocked as blocked:
            self.blocked = blocked.reason
            return lifecycle.Refused(blocked.error_class, blocked.reason, by_exchange=False)
        except NotSent as exc:
            self.blocked = exc.describe()
            return lifecycle.NotExecuted(exc.retry_class, exc.describe())
        except DuplicateClientId:
            self.known_to_exist = True
            return lifecycle.Duplicate()
        except AccountRefused as exc:
            self.blocked = exc.describe()
            self._refuse_account(exc)
            return lifecycle.Refused("account", exc.describe())
        except Refused as exc:
            self.blocked = exc.describe()
            return lifecycle.Refused("permanent", exc.describe())
        except VenueError as exc:
            return lifecycle.MayHaveExecuted(exc.describe())
        self.accepted = created
        self.possibly_sent = True
        return lifecycle.Accepted(created)

    def _check_may_send(self) -> None:
        """Read right before every create: the kill switch (unless reduce-only) and the
        account's standing with the exchange. The caller's read counts for the first send."""
        if self.order.reduce_only:
            return
        guard, self.guard = self.guard or send_guard(self.order.account), None
        if guard.kill_switch.on:
            raise _Blocked("kill_switch", f"kill switch on: {guard.kill_switch.reason}")
        if guard.account_refused is not None:
            reason = f"account {self.order.account} refused: {guard.account_refused}"
            raise _Blocked("account", reason)

    def _signing_window(self) -> SigningWindow:
        """Sign valid until shortly before the lease expires; renew it when too little is left."""
        assert self.lease is not None, "a create is sent only under the order's lease"
        for renewed in (False, True):
            now = now_ms()
            window = lifecycle.signing_window_ms(
                now,
                self.lease.expires_at_ms,
                recv_window_ms=self.settings.recv_window_ms,
                clock_skew_ms=self.settings.clock_skew_ms,
            )
            if window is not None:
                return SigningWindow(timestamp_ms=now, recv_window_ms=window)
            if renewed or not self.lease.extend():
                break
        raise LeaseLost(f"the lease on {self.cid} expired or was taken over")

    def _may_retry_create(self, exc: BaseException) -> bool:
        if isinstance(exc, NotSent):
            return True
        # A copy is refused as a duplicate where the venue refuses reused ids, and a
        # reduce-only copy cannot open anything: resending those cannot double a position.
        return isinstance(exc, Ambiguous | Unexpected) and lifecycle.resend_cannot_double(
            self.facts(), self.venue.traits
        )

    def _before_retry(self, exc: BaseException, wait_s: float) -> None:
        if isinstance(exc, RateLimited):
            base_s = self.policies.rate_limited.base_s
            set_cooldown(self.order.account, exc.retry_after_s or base_s)

    def _record_failed_attempt(self, exc: VenueError) -> None:
        if isinstance(exc, Ambiguous | Unexpected | DuplicateClientId):
            self.possibly_sent = True
        self.order = order_store.record_attempt(
            self.cid,
            retry_class=exc.retry_class.value,
            error=exc.describe(),
            outcome="error",
            sent=exc.reached_exchange,
        )

    def _refuse_account(self, exc: AccountRefused) -> None:
        account = self.order.account
        refuse_account(account, exc.describe())
        order_store.raise_order_alert(
            self.cid,
            "account_auth_failed",
            f"the exchange refused account {account}'s key: {exc.describe()}; every order "
            f"on {account} that is not reduce-only is refused until a request with its key "
            "succeeds",
        )

    # --- look up ---------------------------------------------------------------------

    def look_up(self) -> lifecycle.Observation:
        """Look the order up by client id until seen, or not seen past the visibility window."""
        retry = self.settings.retry
        delays = lookup_delays(retry.lookup_attempts, retry.lookup_base_s, retry.lookup_factor)
        attempts = 0
        source = "lookup"

        def probe() -> ExchangeOrder | None:
            nonlocal attempts, source
            pushed = self._pushed_word()
            if pushed is not None:
                # The stream saw it: it exists, however long the exchange hides it from lookups.
                source = "stream"
                return pushed
            attempts += 1
            try:
                seen = self.venue.fetch_order(
                    self.order.symbol,
                    exchange_order_id=self.order.exchange_order_id,
                    client_order_id=self.cid,
                )
            except VenueError as exc:
                order_store.record_order_event(
                    self.cid,
                    "order_lookup",
                    {"attempt": attempts, "result": "error", "error": exc.describe()},
                )
                return None
            order_store.record_order_event(
                self.cid,
                "order_lookup",
                {"attempt": attempts, "result": "found" if seen else "absent"},
            )
            return seen

        def window_passed() -> bool:
            return lifecycle.window_passed(self.facts(), datetime.now(UTC), self.timing)

        def delay_s(attempt: int) -> float:
            return delays[attempt - 1] if attempt <= len(delays) else retry.lookup_base_s * 4

        seen = poll(probe, delays_s=delay_s, until=window_passed, deadline=self.deadline)
        return lifecycle.NotSeen() if seen is None else lifecycle.Seen(seen, source)

    def _pushed_word(self) -> ExchangeOrder | None:
        """The latest word with a status a stream handed over for the order, if any."""
        from workers.flows.stream_updates import take_order_updates

        words = [seen for seen in take_order_updates(self.cid) if seen.status is not None]
        return words[-1] if words else None

    def _fetch_once(self) -> lifecycle.Observation:
        if self.stream_may_hand_over and stream_healthy(self.order.account, ORDERS, self.settings):
            pushed = self._wait_for_stream()
            if pushed is not None:
                return lifecycle.Seen(pushed, "stream")
        exchange_id = self.accepted.id if self.accepted else self.order.exchange_order_id
        try:
            seen = self.venue.fetch_order(
                self.order.symbol, exchange_order_id=exchange_id, client_order_id=self.cid
            )
        except VenueError as exc:
            logger.info("fetch %s after its create: %s", self.cid, exc.describe())
            seen = None
        return lifecycle.NotSeen() if seen is None else lifecycle.Seen(seen, "create+follow")

    def _wait_for_stream(self) -> ExchangeOrder | None:
        """The orders stream's word that settles the create's outcome
        (``lifecycle.settles_create``), waiting up to ``streams.fill_wait_s`` and never past
        the run's budget; None when none came in time (a message may be lost: ask by REST)."""
        from workers.flows.stream_updates import wait_for_order_update

        until = min(self.deadline, time.monotonic() + self.settings.streams.fill_wait_s)
        while (left_s := until - time.monotonic()) > 0:
            seen = wait_for_order_update(self.cid, left_s)
            if seen is None:
                return None
            if lifecycle.settles_create(self.order.order_type, seen, self.order.amount):
                return seen
        return None

    def _record_stream_updates(self) -> OrderSnapshot:
        """Record what a stream handed over while this run held the lease (a fill of a
        resting order, say) before the run lets go: nobody else reads it."""
        from workers.flows.stream_updates import take_order_updates

        for seen in take_order_updates(self.cid):
            if self.order.terminal:
                continue  # an ended order never moves again: nothing left to record
            step = lifecycle.decide(
                self.facts(),
                lifecycle.Seen(seen, "stream"),
                self.venue.traits,
                datetime.now(UTC),
                self.timing,
            )
            if isinstance(step, lifecycle.Adopt):
                self.adopt(step.status, step.seen, source="stream")
        return self.order

    # --- record the outcome ----------------------------------------------------------

    def adopt(
        self, status: OrderStatus, seen: ExchangeOrder | None, *, source: str
    ) -> OrderSnapshot:
        fields: dict[str, Any] = {}
        for answer in (self.accepted, seen):
            if answer is not None and answer.id is not None:
                fields["exchange_order_id"] = answer.id
        if seen is not None:
            if seen.filled is not None:
                fields["filled"] = seen.filled
            if seen.average is not None and seen.filled:
                fields["average_price"] = seen.average
        accepted_attempt = self.accepted is not None
        if self.order.acked_at is None and (seen is not None or accepted_attempt):
            fields["acked_at"] = datetime.now(UTC)
        if seen is not None and not accepted_attempt and self.order.attempts == 0:
            # Found on the exchange: a create did reach it, sent by a run that died
            # before it could record its attempt.
            fields["attempts"] = 1
        self.accepted = None
        return self._move(
            status,
            payload={"source": source},
            accepted_attempt=accepted_attempt,
            **fields,
        )

    def stay_unknown(self, alert: bool) -> OrderSnapshot:
        if self.order.status != OrderStatus.UNKNOWN:
            self._move(OrderStatus.UNKNOWN, payload={"reason": "not seen after its create"})
        if alert:
            self.order = order_store.raise_order_alert(
                self.cid,
                "order_unknown",
                f"{self.order.account} {self.order.symbol} order {self.cid}: the outcome of "
                "its create is unknown and no lookup found it within the visibility window; "
                "it is not resent (that could double it); the recovery sweep keeps looking "
                f"for {self.settings.unknown_give_up_s:.0f}s after its last send",
                mark_alerted=True,
            )
        return self.order

    def give_up(self, reason: str) -> OrderSnapshot:
        order = self._move(
            OrderStatus.REJECTED,
            payload={"reason": reason},
            last_error_class="not_found",
            last_error=reason,
        )
        order_store.raise_order_alert(
            self.cid,
            "order_unknown",
            f"{order.account} {order.symbol} order {self.cid}: {reason}; recorded as "
            "rejected; a position it may have opened shows as an orphan and is adopted",
            payload={"given_up": True},
        )
        return order

    def _move(
        self,
        target: OrderStatus,
        *,
        payload: dict | None = None,
        accepted_attempt: bool = False,
        **fields: Any,
    ) -> OrderSnapshot:
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
            # Another run (or a tracker) moved the order on, and orders only move
            # forward: take its word.
            latest = order_store.load_order(self.cid)
            assert latest is not None
            self.order = latest
            logger.info("order %s already %s; not moving to %s", self.cid, latest.status, target)
        return self.order


def record_sighting(
    order: OrderSnapshot,
    seen: ExchangeOrder,
    source: str,
    settings: Settings,
    on_terminal: Callable[[Session, OrderSnapshot], Mapping[str, Any]] | None = None,
) -> OrderSnapshot:
    """Record what the exchange showed of an order outside a run (verification, the
    tracking sweep, a stream update, a cancel's lookup), as the lifecycle core decides."""
    run = Submission(
        order=order, settings=settings, deadline=time.monotonic(), on_terminal=on_terminal
    )
    step = lifecycle.decide(
        run.facts(), lifecycle.Seen(seen, source), run.venue.traits, datetime.now(UTC), run.timing
    )
    if isinstance(step, lifecycle.Adopt):
        return run.adopt(step.status, step.seen, source=source)
    return order


def _source_of(observation: lifecycle.Observation) -> str:
    match observation:
        case lifecycle.Seen(source=source):
            return source
        case lifecycle.Accepted():
            return "create"
    return "lookup"
