"""The order lifecycle core: what an observed exchange answer means for an order.

One pure function, :func:`decide`, takes the stored order (:class:`OrderFacts`),
what was just observed (an :data:`Observation`), the venue's rules
(:class:`Traits`), the time and the horizons (:class:`Timing`), and returns the
next :data:`Step`. Submission, the recovery sweep, cancellation and the streams
all ask it; none of them decides on its own. No I/O happens here.

The rules it holds (each is a unit test in ``tests/unit/test_lifecycle.py``):

| observed | the order | next step |
|---|---|---|
| a run takes the order | intent | send (an old intent taken by a sweep: reject as stale) |
| | submitting / unknown (a create may have left) | look it up |
| | resting market order | look it up (its fill is due) |
| | resting limit order, or terminal | done (a tracker follows a resting order) |
| create answered | | adopt its status; no status in the answer (Bybit): fetch once (or take the orders stream's word, see :func:`settles_create`) |
| create failed, did not execute, retries spent | never possibly sent | reject with the class |
| | a create may have left before | look it up |
| create may have executed (timeout, reset, 5xx) | | mark unknown and look it up |
| create refused (permanent) / kill switch / account | never possibly sent | reject |
| | the exchange refused a copy where it refuses reused ids (no "duplicate": none exists) | reject |
| | a create may have left before | look it up |
| duplicate client id | | it exists: look it up, never reject |
| seen (lookup, poll, stream, cancel) | | adopt what was seen |
| | it shows less filled than recorded (an older word: a stream and a poll crossed) | done, keep the record |
| not seen, inside the visibility window | | keep looking |
| not seen, past the window | known to exist (duplicate id) | unknown, critical alert, keep looking |
| | the venue refuses a reused client id (a copy cannot be a second order) | send again |
| | otherwise | unknown, critical alert once; the sweep keeps looking |
| | ... past the give-up horizon | rejected as not found, critical alert |
| not seen after an accepted create | market order, inside the window | keep looking (it has filled) |
| | otherwise | open: accepted, the tracker follows |

"Past the window" is measured from the last moment a create may have reached
the exchange (``sent_at``) plus one request timeout and the visibility lag
(:attr:`Timing.visibility_window_s`): an exchange may hide a fresh order that
long. An open whose outcome stays ambiguous past it is **never resent** where a
resend could double it (Binance keeps a finished order's client id free for
reuse): it is ``unknown``, a person is alerted, and the recovery sweep keeps
looking until the give-up horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from workers.execution.order_state import IN_DOUBT, RESTING, TERMINAL, OrderStatus
from workers.execution.retry import RetryClass


class Sighting(Protocol):
    """What an exchange showed of an order (a create's answer, a lookup, a stream update)."""

    @property
    def status(self) -> str | None: ...  # ccxt's unified status; None when not said

    @property
    def amount(self) -> Decimal | None: ...

    @property
    def filled(self) -> Decimal | None: ...


@dataclass(frozen=True)
class Traits:
    """What the lifecycle must know of an exchange's rules (each venue declares its own)."""

    #: A reused client order id is refused for as long as the exchange keeps the order
    #: (Bybit). False where a finished order's id can be used again (Binance: unique
    #: among open orders only), so that a resend there can double an order.
    refuses_reused_client_id: bool
    #: The create's answer carries the order's status and fill; when False, one fetch
    #: after the create tells them (Bybit answers with ids only).
    create_reports_fill: bool


@dataclass(frozen=True)
class Timing:
    """The horizons of the rules, in seconds."""

    #: From the last moment a create may have reached the exchange until a lookup that
    #: finds nothing means "not there": one request timeout plus the visibility lag.
    visibility_window_s: float
    #: How long after an order was created the sweeps keep looking for it while its
    #: create is in doubt, before it is recorded as rejected (not found).
    give_up_after_s: float
    #: A never-sent order a sweep finds is sent only while it is this fresh.
    resend_max_age_s: float
    #: At most this many creates of one order reach the exchange.
    max_sends: int = 6


@dataclass(frozen=True)
class OrderFacts:
    """The stored order, as far as the rules need it."""

    status: OrderStatus
    order_type: str
    reduce_only: bool
    amount: Decimal
    created_at: datetime
    #: The last moment a create of this order may have reached the exchange.
    sent_at: datetime | None
    #: A create of this order may have reached the exchange (a stored ``submitting`` or
    #: ``unknown`` says so; a run that knows its only sends never executed says not).
    possibly_sent: bool
    #: The exchange accepted a create (it answered with the order).
    accepted: bool = False
    #: The exchange refused a copy as a duplicate client id: the order exists.
    known_to_exist: bool = False
    #: The critical "unknown" alert was raised already.
    alerted: bool = False
    #: Creates of this order that reached (or may have reached) the exchange.
    sends: int = 0
    #: Why no create may be sent now (the kill switch, a refusal, spent retries).
    blocked: str | None = None
    #: How much of it the exchange's last recorded word said had filled.
    filled: Decimal = Decimal(0)


# --- observations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Taken:
    """A run (or a sweep, ``by_sweep``) took the order under its lease."""

    by_sweep: bool = False


@dataclass(frozen=True)
class Accepted:
    """The create was answered with the order."""

    seen: Sighting


@dataclass(frozen=True)
class NotExecuted:
    """The create failed without executing (never left, or refused before execution), and
    its retry class ran out of attempts."""

    retry_class: RetryClass
    reason: str


@dataclass(frozen=True)
class MayHaveExecuted:
    """The create failed in a way that may have executed (timeout after send, reset, 5xx)."""

    reason: str


@dataclass(frozen=True)
class Refused:
    """Nothing was executed: the exchange refused the create (``by_exchange``) and the same
    request would get the same answer, or execq blocked it before it left (the kill
    switch, an account whose key the exchange refused)."""

    error_class: str
    reason: str
    by_exchange: bool = True


@dataclass(frozen=True)
class Duplicate:
    """The exchange refused the create because the client order id is taken."""


@dataclass(frozen=True)
class Seen:
    """A lookup, a poll, a stream update or a cancel's answer showed the order."""

    seen: Sighting
    source: str


@dataclass(frozen=True)
class NotSeen:
    """A lookup (or every lookup so far) found nothing."""


Observation = (
    Taken | Accepted | NotExecuted | MayHaveExecuted | Refused | Duplicate | Seen | NotSeen
)


# --- steps -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send the create (again): the kill switch and the lease are checked right before."""


@dataclass(frozen=True)
class LookUp:
    """Look the order up over the visibility window; ``mark_unknown`` first records that the
    create's outcome is in doubt."""

    mark_unknown: bool = False


@dataclass(frozen=True)
class FetchOnce:
    """Accepted without a status: ask the exchange once how it went."""


@dataclass(frozen=True)
class Adopt:
    """Record the exchange's word: move to ``status`` with what was seen."""

    status: OrderStatus
    seen: Sighting | None


@dataclass(frozen=True)
class StayUnknown:
    """Not seen past the visibility window and not safe to resend: stay ``unknown``;
    ``alert`` when the critical alert was not raised yet. The recovery sweep keeps looking."""

    alert: bool


@dataclass(frozen=True)
class GiveUp:
    """Still not seen at the give-up horizon: record it rejected as not found."""

    reason: str


@dataclass(frozen=True)
class Reject:
    """Nothing reached the exchange, or it refused: record the order rejected."""

    error_class: str
    reason: str


@dataclass(frozen=True)
class Done:
    """Nothing to do (terminal, or resting and followed by a tracker)."""


@dataclass(frozen=True)
class SendCancel:
    """Ask the exchange to cancel the order."""


Step = Send | LookUp | FetchOnce | Adopt | StayUnknown | GiveUp | Reject | Done | SendCancel


# --- the rules -------------------------------------------------------------------------------


def status_from_exchange(seen: Sighting, amount: Decimal) -> OrderStatus | None:
    """Our status for what the exchange showed, or None when it did not say.

    ``closed`` with less than the amount filled is Bybit's PartiallyFilledCanceled
    (and Binance's IOC remainder): a terminal order that did fill in part, so it
    is ``canceled`` with its real ``filled`` kept, never a failure.
    """
    filled = seen.filled or Decimal(0)
    total = seen.amount if seen.amount is not None else amount
    match seen.status:
        case "open":
            return OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.OPEN
        case "closed":
            return OrderStatus.FILLED if filled >= total else OrderStatus.CANCELED
        case "canceled":
            return OrderStatus.CANCELED
        case "expired":
            return OrderStatus.EXPIRED
        case "rejected":
            return OrderStatus.REJECTED
    return None


def settles_create(order_type: str, seen: Sighting, amount: Decimal) -> bool:
    """Whether a pushed update settles a create whose answer carried no status, so the
    run stops waiting for the stream: a terminal status, or any status of a limit order
    (it may rest for long; the tracker and the stream follow it). A market order's
    ``open`` is not the end of it: its fill follows at once."""
    status = status_from_exchange(seen, amount)
    if status is None:
        return False
    return status in TERMINAL or order_type != "market"


def window_passed(order: OrderFacts, now: datetime, timing: Timing) -> bool:
    """Whether a lookup that finds nothing now means "not there" (see :class:`Timing`)."""
    anchor = order.sent_at or order.created_at
    return now >= anchor + timedelta(seconds=timing.visibility_window_s)


def resend_cannot_double(order: OrderFacts, traits: Traits) -> bool:
    """A resend of a create whose first copy may exist cannot become a second order: the
    exchange refuses a reused client id.

    Reduce-only is not enough: a second reduce-only fill cannot open a position, but it
    closes more of one than the signal asked (a partial close done twice). A close that
    stays unknown is taken up by its owner with a fresh leg sized from the exchange's
    position (the aged close, liquidation), never by resending the same order.
    """
    return traits.refuses_reused_client_id


def _on_taken(order: OrderFacts, observed: Taken, now: datetime, timing: Timing) -> Step:
    if order.status in TERMINAL:
        return Done()
    if order.status == OrderStatus.INTENT or (
        order.status == OrderStatus.SUBMITTING and not order.possibly_sent
    ):
        age_s = (now - order.created_at).total_seconds()
        if observed.by_sweep and age_s > timing.resend_max_age_s:
            return Reject(
                "recovery",
                f"never sent, and the signal is {age_s:.0f}s old: past the resend age",
            )
        return Send()
    if order.status in IN_DOUBT:
        return LookUp()
    if order.status in RESTING and order.order_type == "market":
        return LookUp()
    return Done()


def _on_not_seen(order: OrderFacts, traits: Traits, now: datetime, timing: Timing) -> Step:
    if order.accepted:
        # Accepted but not visible yet: it exists. A market order has filled by now and
        # shows within the window; anything else rests, and the tracker follows it.
        if order.order_type == "market" and not window_passed(order, now, timing):
            return LookUp()
        return Adopt(OrderStatus.OPEN, None)
    if order.status == OrderStatus.INTENT and order.blocked is None:
        return Send()
    if not window_passed(order, now, timing):
        return LookUp()
    if order.known_to_exist:
        return StayUnknown(alert=not order.alerted)
    if (
        resend_cannot_double(order, traits)
        and order.blocked is None
        and order.sends < timing.max_sends
    ):
        return Send()
    if now >= order.created_at + timedelta(seconds=timing.give_up_after_s):
        return GiveUp(
            f"not found on the exchange {timing.give_up_after_s:.0f}s after its last send; "
            "never resent"
        )
    return StayUnknown(alert=not order.alerted)


def decide(
    order: OrderFacts, observed: Observation, traits: Traits, now: datetime, timing: Timing
) -> Step:
    """The next step for ``order`` after ``observed`` (see the module's table)."""
    match observed:
        case Taken():
            return _on_taken(order, observed, now, timing)
        case Seen(seen=seen) if seen.filled is not None and seen.filled < order.filled:
            # Fills only grow: this word is older than the one recorded.
            return Done()
        case Accepted(seen=seen) | Seen(seen=seen):
            status = status_from_exchange(seen, order.amount)
            if status is None:
                return FetchOnce() if isinstance(observed, Accepted) else LookUp()
            return Adopt(status, seen)
        case NotExecuted(retry_class=retry_class, reason=reason):
            if order.possibly_sent:
                return LookUp()
            return Reject(str(retry_class), f"{retry_class} retries exhausted: {reason}")
        case MayHaveExecuted():
            return LookUp(mark_unknown=order.status != OrderStatus.UNKNOWN)
        case Refused(error_class=error_class, reason=reason, by_exchange=by_exchange):
            if not order.possibly_sent:
                return Reject(error_class, reason)
            if by_exchange and traits.refuses_reused_client_id:
                # Had an earlier copy reached it, the exchange would have answered
                # "duplicate client id": this refusal proves there is none.
                return Reject(error_class, reason)
            return LookUp()
        case Duplicate():
            return LookUp(mark_unknown=order.status != OrderStatus.UNKNOWN)
        case NotSeen():
            return _on_not_seen(order, traits, now, timing)
    raise TypeError(f"not an observation: {observed!r}")


def decide_cancel(order: OrderFacts, observed: Observation | None) -> Step:
    """The next step of cancelling ``order`` (``observed`` None: the cancel starts).

    Never sent → canceled at once; terminal → nothing to do; in doubt → look it up
    first (a cancel of what may not exist proves nothing); resting → cancel. A
    cancel's answer, or a lookup, is adopted; one that still shows the order
    working means cancel again; a cancel the exchange refused because the order is
    no longer open (it filled meanwhile) is followed by a lookup, so the fill is
    recorded, never lost.
    """
    if observed is None:
        if order.status in TERMINAL:
            return Done()
        if order.status == OrderStatus.INTENT or (
            order.status == OrderStatus.SUBMITTING and not order.possibly_sent
        ):
            return Adopt(OrderStatus.CANCELED, None)
        if order.status in IN_DOUBT:
            return LookUp()
        return SendCancel()
    match observed:
        case Seen(seen=seen) | Accepted(seen=seen):
            status = status_from_exchange(seen, order.amount)
            if status is None:
                return LookUp()
            if status in RESTING:
                return SendCancel()
            return Adopt(status, seen)
        case NotSeen():
            return Done()
    return LookUp()


# --- fencing -----------------------------------------------------------------------------------


def signing_window_ms(
    now_ms: int,
    lease_expires_at_ms: int,
    *,
    recv_window_ms: int,
    clock_skew_ms: int,
    min_window_ms: int = 500,
) -> int | None:
    """The validity window to sign a create with, so that the exchange refuses it once the
    run's lease on the order has expired: ``timestamp + window <= lease expiry - skew``.

    A run may send only while it holds the order's lease; the recovery sweep takes an
    order over only after the lease expired. A run paused between this moment and the
    request's arrival (a stopped VM, a long GC) has its request refused as stale
    instead of doubling an order someone else has placed since. None when less than
    ``min_window_ms`` is left: renew the lease first.
    """
    room_ms = lease_expires_at_ms - now_ms - clock_skew_ms
    if room_ms < min_window_ms:
        return None
    return min(recv_window_ms, room_ms)
