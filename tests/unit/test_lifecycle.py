"""The order lifecycle core: every exactly-once rule, with a fake clock and plain facts."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.execution.lifecycle import (
    Accepted,
    Adopt,
    Done,
    Duplicate,
    FetchOnce,
    GiveUp,
    LookUp,
    MayHaveExecuted,
    NotExecuted,
    NotSeen,
    OrderFacts,
    Refused,
    Reject,
    Seen,
    Send,
    SendCancel,
    StayUnknown,
    Taken,
    Timing,
    Traits,
    decide,
    decide_cancel,
    settles_create,
    signing_window_ms,
)
from workers.execution.order_state import OrderStatus
from workers.execution.retry import RetryClass

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
TIMING = Timing(visibility_window_s=20.0, give_up_after_s=3600.0, resend_max_age_s=300.0)
BINANCE = Traits(refuses_reused_client_id=False, create_reports_fill=True)
BYBIT = Traits(refuses_reused_client_id=True, create_reports_fill=False)


@dataclass(frozen=True)
class Sighting:
    status: str | None
    amount: Decimal | None = Decimal("0.3")
    filled: Decimal | None = Decimal(0)


def order(status: OrderStatus = OrderStatus.INTENT, **changes) -> OrderFacts:
    base = OrderFacts(
        status=status,
        order_type="market",
        reduce_only=False,
        amount=Decimal("0.3"),
        created_at=T0,
        sent_at=None,
        possibly_sent=False,
    )
    return replace(base, **changes)


def in_doubt(**changes) -> OrderFacts:
    """An open whose create may have reached the exchange at T0."""
    return order(
        OrderStatus.UNKNOWN, **({"sent_at": T0, "possibly_sent": True, "sends": 1} | changes)
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- a run takes the order --------------------------------------------------------------


def test_a_run_sends_an_order_nothing_was_sent_for():
    assert decide(order(), Taken(), BINANCE, at(0), TIMING) == Send()
    fresh = order(OrderStatus.SUBMITTING)
    assert decide(fresh, Taken(), BINANCE, at(0), TIMING) == Send()


@pytest.mark.parametrize("status", [OrderStatus.SUBMITTING, OrderStatus.UNKNOWN])
def test_a_run_that_finds_a_create_possibly_sent_looks_it_up_first(status):
    facts = order(status, sent_at=T0, possibly_sent=True)
    assert decide(facts, Taken(), BINANCE, at(1), TIMING) == LookUp()


def test_a_resting_limit_order_is_the_trackers_and_a_terminal_one_is_done():
    resting = order(OrderStatus.OPEN, order_type="limit", accepted=True, possibly_sent=True)
    assert decide(resting, Taken(), BINANCE, at(1), TIMING) == Done()
    assert decide(order(OrderStatus.FILLED), Taken(), BINANCE, at(1), TIMING) == Done()


def test_a_sweep_does_not_send_a_stale_intent():
    step = decide(order(), Taken(by_sweep=True), BINANCE, at(301), TIMING)
    assert isinstance(step, Reject) and step.error_class == "recovery"
    assert decide(order(), Taken(by_sweep=True), BINANCE, at(10), TIMING) == Send()


# --- what a create's answer means ------------------------------------------------------


def test_an_accepted_create_is_adopted_and_a_bare_one_is_fetched_once():
    facts = order(OrderStatus.SUBMITTING)
    filled = Sighting("closed", filled=Decimal("0.3"))
    assert decide(facts, Accepted(filled), BINANCE, at(0), TIMING) == Adopt(
        OrderStatus.FILLED, filled
    )
    assert decide(facts, Accepted(Sighting(None)), BYBIT, at(0), TIMING) == FetchOnce()


def test_closed_with_less_than_the_amount_is_canceled_with_its_fill_not_failed():
    partial = Sighting("closed", filled=Decimal("0.1"))
    step = decide(order(OrderStatus.SUBMITTING), Accepted(partial), BYBIT, at(0), TIMING)
    assert step == Adopt(OrderStatus.CANCELED, partial)


def test_a_create_that_did_not_execute_is_rejected_only_when_nothing_else_may_exist():
    failed = NotExecuted(RetryClass.RATE_LIMITED, "429 x5")
    step = decide(order(OrderStatus.SUBMITTING), failed, BINANCE, at(0), TIMING)
    assert isinstance(step, Reject) and step.error_class == "rate_limited"
    # An earlier create of the same order may have executed: look, never reject
    assert decide(in_doubt(), failed, BINANCE, at(0), TIMING) == LookUp()


def test_a_create_that_may_have_executed_is_looked_up_not_resent():
    facts = order(OrderStatus.SUBMITTING, possibly_sent=True, sent_at=T0)
    step = decide(facts, MayHaveExecuted("read timeout"), BINANCE, at(0), TIMING)
    assert step == LookUp(mark_unknown=True)


def test_a_refusal_rejects_only_an_order_that_never_possibly_reached_the_exchange():
    assert decide(
        order(OrderStatus.SUBMITTING), Refused("permanent", "margin"), BINANCE, at(0), TIMING
    ) == Reject("permanent", "margin")
    blocked = Refused("kill_switch", "on", by_exchange=False)
    assert decide(in_doubt(), blocked, BYBIT, at(0), TIMING) == LookUp()
    assert decide(in_doubt(), Refused("permanent", "margin"), BINANCE, at(0), TIMING) == LookUp()


def test_a_refused_copy_proves_no_earlier_one_exists_where_reused_ids_are_refused():
    # Given Bybit, where a copy of an existing order is answered "duplicate client id"
    # When the copy of an order in doubt is refused for another reason
    step = decide(in_doubt(), Refused("permanent", "reduce-only"), BYBIT, at(5), TIMING)
    # Then no earlier copy exists: the order is rejected
    assert step == Reject("permanent", "reduce-only")


@pytest.mark.parametrize("traits", [BINANCE, BYBIT])
def test_a_duplicate_client_id_means_the_order_exists_never_rejected(traits):
    step = decide(order(OrderStatus.SUBMITTING), Duplicate(), traits, at(0), TIMING)
    assert step == LookUp(mark_unknown=True)
    # and if no lookup ever shows it: unknown with an alert, still never rejected
    facts = in_doubt(known_to_exist=True)
    assert decide(facts, NotSeen(), traits, at(4000), TIMING) == StayUnknown(alert=True)


# --- not seen ------------------------------------------------------------------------------


def test_not_seen_inside_the_visibility_window_means_keep_looking():
    assert decide(in_doubt(), NotSeen(), BINANCE, at(19), TIMING) == LookUp()


def test_an_ambiguous_open_is_never_resent_where_a_resend_can_double_it():
    # Given Binance (a filled order's client id is free again) and an open not seen
    step = decide(in_doubt(), NotSeen(), BINANCE, at(21), TIMING)
    # Then it stays unknown with a critical alert, once
    assert step == StayUnknown(alert=True)
    assert decide(in_doubt(alerted=True), NotSeen(), BINANCE, at(80), TIMING) == StayUnknown(
        alert=False
    )


def test_resending_is_allowed_only_where_a_copy_cannot_become_a_second_order():
    # Bybit refuses a reused orderLinkId: a copy cannot become a second order
    assert decide(in_doubt(), NotSeen(), BYBIT, at(21), TIMING) == Send()
    # On Binance even a reduce-only copy would fill again: a partial close done twice
    step = decide(in_doubt(reduce_only=True), NotSeen(), BINANCE, at(21), TIMING)
    assert step == StayUnknown(alert=True)


def test_resends_stop_at_the_cap_and_when_sending_is_blocked():
    assert decide(in_doubt(sends=6), NotSeen(), BYBIT, at(21), TIMING) == StayUnknown(alert=True)
    blocked = in_doubt(blocked="kill switch on")
    assert decide(blocked, NotSeen(), BYBIT, at(21), TIMING) == StayUnknown(alert=True)


def test_an_unknown_order_is_given_up_at_the_horizon_as_not_found():
    step = decide(in_doubt(alerted=True), NotSeen(), BINANCE, at(3601), TIMING)
    assert isinstance(step, GiveUp)
    # The horizon counts from the order's creation, however often it was sent since
    late_send = in_doubt(alerted=True, sent_at=at(3570))
    assert isinstance(decide(late_send, NotSeen(), BINANCE, at(3601), TIMING), GiveUp)


def test_an_accepted_order_not_visible_yet_is_open_for_the_tracker():
    facts = order(
        OrderStatus.SUBMITTING, order_type="limit", accepted=True, possibly_sent=True, sent_at=T0
    )
    assert decide(facts, NotSeen(), BYBIT, at(1), TIMING) == Adopt(OrderStatus.OPEN, None)


def test_an_accepted_market_order_not_visible_yet_is_looked_for_within_the_window():
    # Given Bybit's bare create answer and an order hidden by the exchange's visibility lag
    facts = order(OrderStatus.SUBMITTING, accepted=True, possibly_sent=True, sent_at=T0)
    # Then the run keeps looking (it has filled), and past the window leaves it to the tracker
    assert decide(facts, NotSeen(), BYBIT, at(1), TIMING) == LookUp()
    assert decide(facts, NotSeen(), BYBIT, at(21), TIMING) == Adopt(OrderStatus.OPEN, None)


def test_seen_is_adopted_whoever_saw_it():
    seen = Sighting("closed", filled=Decimal("0.3"))
    for source in ("lookup", "tracking", "stream", "verification"):
        assert decide(in_doubt(), Seen(seen, source), BINANCE, at(90), TIMING) == Adopt(
            OrderStatus.FILLED, seen
        )


@given(
    status=st.sampled_from(list(OrderStatus)),
    reduce_only=st.booleans(),
    possibly_sent=st.booleans(),
    known=st.booleans(),
    seconds=st.floats(min_value=0, max_value=10_000),
    sends=st.integers(min_value=0, max_value=10),
)
def test_nothing_that_may_exist_is_ever_resent_on_binance(
    status, reduce_only, possibly_sent, known, seconds, sends
):
    # An intent is what nothing was sent for.
    possibly_sent = possibly_sent and status != OrderStatus.INTENT
    facts = order(
        status,
        reduce_only=reduce_only,
        possibly_sent=possibly_sent,
        sent_at=T0 if possibly_sent else None,
        # A duplicate id is only ever learnt from a create that was sent.
        known_to_exist=known and possibly_sent,
        sends=sends,
    )
    for observed in (Taken(), NotSeen(), MayHaveExecuted("t"), Duplicate()):
        step = decide(facts, observed, BINANCE, at(seconds), TIMING)
        assert not (isinstance(step, Send) and (facts.possibly_sent or facts.known_to_exist))


# --- cancel --------------------------------------------------------------------------------


def test_a_word_showing_less_filled_than_recorded_is_older_and_changes_nothing():
    # Given a partial fill of 0.2 recorded (a stream's word, say)
    recorded = order(OrderStatus.PARTIALLY_FILLED, filled=Decimal("0.2"), accepted=True)
    # When a poll that read it earlier reports 0.1, or the stream a late message
    for source in ("tracking", "stream"):
        older = Seen(Sighting("open", filled=Decimal("0.1")), source)
        assert decide(recorded, older, BINANCE, T0, TIMING) == Done()
    # Then a word with as much or more filled is adopted as ever
    same = Sighting("open", filled=Decimal("0.2"))
    assert decide(recorded, Seen(same, "stream"), BINANCE, T0, TIMING) == Adopt(
        OrderStatus.PARTIALLY_FILLED, same
    )
    done = Sighting("closed", filled=Decimal("0.3"))
    assert decide(recorded, Seen(done, "tracking"), BINANCE, T0, TIMING) == Adopt(
        OrderStatus.FILLED, done
    )


def test_a_market_orders_create_is_settled_by_the_streams_terminal_word_only():
    # A market order's "open" is followed at once by its fill: keep waiting for it
    assert not settles_create("market", Sighting("open"), Decimal("0.3"))
    assert not settles_create("market", Sighting("open", filled=Decimal("0.1")), Decimal("0.3"))
    assert settles_create("market", Sighting("closed", filled=Decimal("0.3")), Decimal("0.3"))
    # an IOC remainder canceled after a partial fill ends it too
    assert settles_create("market", Sighting("closed", filled=Decimal("0.1")), Decimal("0.3"))
    # a word without a status settles nothing
    assert not settles_create("market", Sighting(None), Decimal("0.3"))


@given(
    order_type=st.sampled_from(["market", "limit"]),
    status=st.sampled_from([None, "open", "closed", "canceled", "expired", "rejected"]),
    filled=st.decimals(min_value=0, max_value=Decimal("0.3"), places=2),
)
def test_the_streams_word_settles_a_create_when_it_ends_the_order_or_the_order_may_rest(
    order_type, status, filled
):
    seen = Sighting(status, filled=filled)
    settled = settles_create(order_type, seen, Decimal("0.3"))
    if status is None:
        assert not settled
    elif status != "open":
        assert settled
    else:
        # a limit order may rest for long: its first word ends the wait
        assert settled == (order_type == "limit")


def test_a_cancel_of_an_order_never_sent_cancels_it_at_once():
    assert decide_cancel(order(), None) == Adopt(OrderStatus.CANCELED, None)


def test_a_cancel_looks_an_order_in_doubt_up_first_and_cancels_a_resting_one():
    assert decide_cancel(in_doubt(), None) == LookUp()
    resting = order(OrderStatus.OPEN, accepted=True, possibly_sent=True)
    assert decide_cancel(resting, None) == SendCancel()
    assert decide_cancel(order(OrderStatus.FILLED), None) == Done()


def test_a_cancel_that_arrives_after_the_fill_records_the_fill():
    resting = order(OrderStatus.OPEN, accepted=True, possibly_sent=True)
    # the exchange refused the cancel (no longer open): look it up
    assert decide_cancel(resting, Refused("not_open", "-2011")) == LookUp()
    filled = Sighting("closed", filled=Decimal("0.3"))
    assert decide_cancel(resting, Seen(filled, "cancel+lookup")) == Adopt(
        OrderStatus.FILLED, filled
    )
    still = Sighting("open", filled=Decimal("0.1"))
    assert decide_cancel(resting, Seen(still, "cancel")) == SendCancel()


# --- fencing -------------------------------------------------------------------------------


def test_a_create_is_signed_to_expire_before_the_lease_does():
    now = 1_000_000
    window = signing_window_ms(now, now + 40_000, recv_window_ms=5000, clock_skew_ms=1000)
    assert window == 5000
    window = signing_window_ms(now, now + 3_000, recv_window_ms=5000, clock_skew_ms=1000)
    assert window == 2000
    assert signing_window_ms(now, now + 1_200, recv_window_ms=5000, clock_skew_ms=1000) is None


@given(
    now=st.integers(min_value=0, max_value=10**13),
    left=st.integers(min_value=-60_000, max_value=120_000),
    recv=st.integers(min_value=1000, max_value=60_000),
    skew=st.integers(min_value=0, max_value=30_000),
)
def test_no_signed_request_outlives_the_lease(now, left, recv, skew):
    window = signing_window_ms(now, now + left, recv_window_ms=recv, clock_skew_ms=skew)
    if window is not None:
        assert now + window + skew <= now + left
        assert 500 <= window <= recv
