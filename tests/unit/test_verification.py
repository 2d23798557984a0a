"""Verification verdicts: a filled order is never a failure, a miss is never a "no"."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.execution.verification import (
    OrderObservation,
    OutcomeKind,
    SourceName,
    SourceOutcome,
    Verdict,
    decide,
    flat_outcome,
    order_verdict,
    position_outcome,
)

D = Decimal
ORDER, CACHE, REST = SourceName.ORDER, SourceName.CACHE, SourceName.REST
MISS = SourceOutcome(OutcomeKind.NO_ANSWER)
FLAT = position_outcome(D(0))


def order(status, amount="1", filled="1"):
    return order_verdict(OrderObservation(status, D(amount), None if filled is None else D(filled)))


# --- reading one order ---------------------------------------------------------------


def test_a_closed_order_with_its_full_amount_is_filled():
    assert order("closed") == SourceOutcome(OutcomeKind.FILLED, D("1"))


def test_bybit_partially_filled_canceled_is_a_partial_fill_not_a_failure():
    # Given Bybit's PartiallyFilledCanceled, which ccxt parses as closed with filled < amount
    outcome = order("closed", amount="1", filled="0.4")
    assert outcome == SourceOutcome(OutcomeKind.PARTIALLY_FILLED, D("0.4"))


@pytest.mark.parametrize("status", ["closed", "canceled", "expired", "rejected"])
def test_a_terminal_order_with_zero_filled_is_a_definite_no(status):
    assert order(status, filled="0").kind is OutcomeKind.NOT_FILLED


@pytest.mark.parametrize("status", ["closed", "canceled"])
def test_a_terminal_order_without_a_reported_fill_is_no_answer(status):
    assert order(status, filled=None).kind is OutcomeKind.NO_ANSWER


def test_an_order_not_found_is_no_answer():
    # Bybit right after create: fetch_order finds nothing yet (seed 003)
    assert order(None, filled=None).kind is OutcomeKind.NO_ANSWER


def test_an_open_order_is_pending_with_what_filled_so_far():
    assert order("open", filled="0.3") == SourceOutcome(OutcomeKind.PENDING, D("0.3"))
    assert order("open", filled=None) == SourceOutcome(OutcomeKind.PENDING, D(0))


def test_position_answers():
    assert position_outcome(None).kind is OutcomeKind.NO_ANSWER
    assert position_outcome(D(0)).kind is OutcomeKind.FLAT
    assert position_outcome(D("-2.5")) == SourceOutcome(OutcomeKind.FILLED, D("2.5"))


# --- deciding --------------------------------------------------------------------------


def test_a_filled_create_response_verifies_at_once():
    result = decide(D("1"), [(ORDER, order("closed"))], False, D(0))
    assert (result.verdict, result.actual_size, result.mismatch, result.decided_by) == (
        Verdict.VERIFIED,
        D("1"),
        False,
        ORDER,
    )


def test_bybit_visibility_lag_keeps_asking_then_verifies():
    # Given fetch_order finds nothing twice, then the filled order
    answers = [(ORDER, order(None, filled=None)), (CACHE, MISS), (REST, FLAT)]
    assert decide(D("1"), answers, False, D(0)).pending
    answers.append((ORDER, order("closed")))
    assert decide(D("1"), answers, False, D(0)).verdict is Verdict.VERIFIED


def test_positions_lag_does_not_hide_a_filled_order():
    # Given REST positions still flat (3 s lag) but the order filled
    answers = [(REST, FLAT), (ORDER, order("closed")), (REST, FLAT)]
    result = decide(D("1"), answers, True, D(0))
    assert result.verdict is Verdict.VERIFIED and result.decided_by is ORDER


def test_canceled_with_zero_filled_fails():
    result = decide(D("1"), [(ORDER, order("canceled", filled="0"))], False, D(0))
    assert result.verdict is Verdict.FAILED
    assert result.actual_size == 0


def test_a_partial_fill_verifies_the_partial_size_and_flags_the_mismatch():
    result = decide(D("1"), [(ORDER, order("closed", filled="0.4"))], False, D("0.0005"))
    assert result.verdict is Verdict.VERIFIED
    assert result.actual_size == D("0.4") and result.mismatch


def test_a_difference_within_tolerance_is_no_mismatch():
    result = decide(
        D("1"), [(ORDER, order("closed", amount="1", filled="0.9999"))], False, D("0.001")
    )
    assert not result.mismatch


def test_a_position_in_the_cache_verifies_when_the_order_is_silent():
    answers = [(ORDER, order(None, filled=None)), (CACHE, position_outcome(D("1")))]
    result = decide(D("1"), answers, False, D(0))
    assert result.verdict is Verdict.VERIFIED and result.decided_by is CACHE


def test_a_position_from_rest_verifies_a_short_by_its_size():
    result = decide(D("2"), [(REST, position_outcome(D("-2")))], False, D(0))
    assert result.verdict is Verdict.VERIFIED and result.actual_size == D("2")


def test_silence_until_the_budget_runs_out_is_unknown_never_failed():
    answers = [(ORDER, order(None, filled=None)), (CACHE, MISS), (REST, FLAT)]
    result = decide(D("1"), answers, True, D(0))
    assert result.verdict is Verdict.UNKNOWN
    assert result.actual_size is None and result.decided_by is None


def test_an_order_still_working_when_time_runs_out_verifies_what_filled():
    result = decide(D("1"), [(ORDER, order("open", filled="0.25"))], True, D(0))
    assert result.verdict is Verdict.VERIFIED
    assert result.actual_size == D("0.25") and result.mismatch


def test_an_open_order_with_nothing_filled_keeps_asking_then_is_unknown():
    answers = [(ORDER, order("open", filled="0"))]
    assert decide(D("1"), answers, False, D(0)).pending
    assert decide(D("1"), answers, True, D(0)).verdict is Verdict.UNKNOWN


def test_a_later_miss_does_not_erase_an_earlier_answer():
    answers = [(ORDER, order("closed")), (ORDER, order(None, filled=None))]
    assert decide(D("1"), answers, False, D(0)).verdict is Verdict.VERIFIED


outcomes = st.builds(
    SourceOutcome,
    kind=st.sampled_from(list(OutcomeKind)),
    filled=st.decimals(min_value=0, max_value=10, places=3),
)
position_answers = st.one_of(
    st.just(MISS),
    st.just(FLAT),
    st.decimals(min_value=0, max_value=10, places=3).map(position_outcome),
)


@given(
    answers=st.lists(st.tuples(st.sampled_from([CACHE, REST]), position_answers), max_size=10),
    order_answers=st.lists(
        st.sampled_from([order(None, filled=None), order("open", filled="0")]), max_size=5
    ),
    exhausted=st.booleans(),
)
def test_never_failed_without_a_terminal_zero_fill_order(answers, order_answers, exhausted):
    # Given any mix of cache misses, flat REST answers, silent or unfilled open orders
    mixed = answers + [(ORDER, answer) for answer in order_answers]
    result = decide(D("1"), mixed, exhausted, D(0))
    # Then the verdict is never FAILED, and UNKNOWN only once the budget is spent
    assert result.verdict is not Verdict.FAILED
    if result.verdict is Verdict.UNKNOWN:
        assert exhausted


@given(
    answers=st.lists(st.tuples(st.sampled_from(list(SourceName)), outcomes), max_size=12),
    filled=st.decimals(min_value=D("0.001"), max_value=10, places=3),
    exhausted=st.booleans(),
)
def test_a_filled_order_is_always_verified_whatever_else_was_said(answers, filled, exhausted):
    answers = answers + [(ORDER, SourceOutcome(OutcomeKind.FILLED, filled))]
    result = decide(D("1"), answers, exhausted, D(0))
    assert result.verdict is Verdict.VERIFIED
    assert result.actual_size == filled and result.decided_by is ORDER


@given(answers=st.lists(st.tuples(st.sampled_from(list(SourceName)), outcomes), max_size=12))
def test_with_budget_left_the_answer_is_never_unknown(answers):
    assert decide(D("1"), answers, False, D(0)).verdict is not Verdict.UNKNOWN


# --- flat after close -----------------------------------------------------------------------


def test_every_source_at_zero_is_flat():
    check = flat_outcome([D(0), D(0)], D("0.001"))
    assert check.flat and check.residual == 0 and not check.dust


def test_a_residual_is_not_flat_and_names_the_size():
    # Given the cache flat but REST still showing 0.3 of a short
    check = flat_outcome([D(0), D("-0.3")], D("0.001"))
    assert not check.flat and check.residual == D("0.3")


def test_a_residual_below_the_minimum_is_dust():
    check = flat_outcome([D("0.0004")], D("0.001"))
    assert check.flat and check.dust and check.residual == D("0.0004")


def test_no_answer_at_all_is_not_flat():
    check = flat_outcome([], D("0.001"))
    assert not check.flat and check.answered == 0


@given(
    residuals=st.lists(st.decimals(min_value=-5, max_value=5, places=3), min_size=1),
    minimum=st.decimals(min_value=0, max_value=1, places=3),
)
def test_flat_only_when_no_source_shows_a_closable_size(residuals, minimum):
    check = flat_outcome(residuals, minimum)
    assert check.residual == max(abs(r) for r in residuals)
    assert check.flat == all(abs(r) == 0 or abs(r) < minimum for r in residuals)


def test_outcomes_accept_the_plain_kind_strings():
    assert SourceOutcome("partially_filled", D("0.5")).kind is OutcomeKind.PARTIALLY_FILLED
    with pytest.raises(ValueError):
        SourceOutcome("maybe")
