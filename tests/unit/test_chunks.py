"""Partial-close plans: chunks the exchange accepts, adding up to the position exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from workers.execution.chunks import (
    ceil_to_step,
    floor_to_step,
    next_chunk,
    plan_chunks,
)

D = Decimal
steps = st.sampled_from([D("1"), D("0.1"), D("0.01"), D("0.001"), D("0.0001"), D("0.5"), D("5")])


@st.composite
def markets(draw):
    step = draw(steps)
    min_steps = draw(st.integers(min_value=1, max_value=50))
    return step, step * min_steps


def on_grid(step: Decimal, max_steps: int = 100_000):
    return st.integers(min_value=0, max_value=max_steps).map(lambda n: step * n)


def test_precision_0_001_and_minimum_0_005_closes_a_position_exactly():
    # Given the market: amount step 0.001, minimum 0.005, and a position of 0.017
    plan = plan_chunks(D("0.017"), 3, D("0.001"), D("0.005"))
    # Then three valid chunks close it exactly, the last taking the remainder
    assert plan.can_help
    assert plan.chunks == (D("0.005"), D("0.005"), D("0.007"))
    assert plan.total == D("0.017")
    assert plan.remainder == 0


def test_a_large_position_splits_into_the_requested_count():
    plan = plan_chunks(D("10"), 3, D("0.001"), D("0.005"))
    assert plan.chunks == (D("3.333"), D("3.333"), D("3.334"))


def test_a_position_too_small_for_three_chunks_gets_two():
    plan = plan_chunks(D("0.012"), 3, D("0.001"), D("0.005"))
    assert plan.chunks == (D("0.006"), D("0.006"))


@pytest.mark.parametrize("size", ["0.005", "0.004", "0.009", "0"])
def test_chunking_cannot_help_at_or_near_the_minimum(size):
    # Given a position that cannot be split into two orders of at least the minimum
    plan = plan_chunks(D(size), 3, D("0.001"), D("0.005"))
    # Then the plan says so, and the caller widens the tolerance instead
    assert not plan.can_help
    assert plan.chunks == ()
    assert "minimum" in plan.reason or "cannot be split" in plan.reason


def test_a_size_off_the_grid_reports_the_unclosable_remainder():
    plan = plan_chunks(D("0.0175"), 3, D("0.001"), D("0.005"))
    assert plan.total == D("0.017")
    assert plan.remainder == D("0.0005")
    assert "0.0005" in plan.reason


def test_a_minimum_off_the_grid_is_met_on_the_grid():
    plan = plan_chunks(D("0.02"), 3, D("0.001"), D("0.0055"))
    assert all(chunk >= D("0.0055") and chunk % D("0.001") == 0 for chunk in plan.chunks)
    assert plan.total == D("0.02")


def test_short_positions_are_planned_by_their_absolute_size():
    assert plan_chunks(D("-0.017"), 3, D("0.001"), D("0.005")).total == D("0.017")


@given(market=markets(), data=st.data(), chunk_count=st.integers(min_value=1, max_value=20))
def test_every_plan_is_valid_and_exact(market, data, chunk_count):
    step, minimum = market
    size = data.draw(on_grid(step))
    plan = plan_chunks(size, chunk_count, step, minimum)
    if plan.can_help:
        assert 2 <= len(plan.chunks) <= chunk_count
        assert all(chunk % step == 0 for chunk in plan.chunks)
        assert all(chunk >= minimum for chunk in plan.chunks)
        assert plan.total == size
    else:
        assert plan.chunks == ()
        assert size < 2 * minimum or chunk_count < 2


@given(market=markets(), data=st.data())
def test_chunking_helps_whenever_two_valid_chunks_fit(market, data):
    step, minimum = market
    size = data.draw(on_grid(step))
    assume(size >= 2 * minimum)
    assert plan_chunks(size, 3, step, minimum).can_help


@given(
    market=markets(),
    data=st.data(),
    extra=st.decimals(min_value=0, max_value=1, places=6),
)
def test_off_grid_sizes_leave_less_than_one_step(market, data, extra):
    step, minimum = market
    size = data.draw(on_grid(step)) + extra * step
    plan = plan_chunks(size, 3, step, minimum)
    assert 0 <= plan.remainder < step
    if plan.can_help:
        assert plan.total + plan.remainder == size


@given(market=markets(), data=st.data(), chunks_left=st.integers(min_value=1, max_value=5))
def test_next_chunk_is_valid_and_never_strands_an_unclosable_rest(market, data, chunks_left):
    step, minimum = market
    remaining = data.draw(on_grid(step))
    amount = next_chunk(remaining, chunks_left, step, minimum)
    if amount == 0:
        assert remaining < minimum
        return
    assert amount % step == 0
    assert minimum <= amount <= remaining
    rest = remaining - amount
    assert rest == 0 or rest >= minimum


def test_closing_chunk_by_chunk_with_rereads_ends_flat():
    # Given 0.017 to close in 3 chunks, and a partial fill of the first chunk (0.004 of 0.005)
    step, minimum, remaining = D("0.001"), D("0.005"), D("0.017")
    sent = []
    first = next_chunk(remaining, 3, step, minimum)
    sent.append(first)
    remaining -= D("0.004")
    # When each following chunk is planned from the re-read position
    chunks_left = 2
    while remaining > 0 and chunks_left > 0:
        amount = next_chunk(remaining, chunks_left, step, minimum)
        sent.append(amount)
        remaining -= amount
        chunks_left -= 1
    # Then the position is flat and every order was valid
    assert remaining == 0
    assert all(amount >= minimum and amount % step == 0 for amount in sent)


def test_next_chunk_takes_everything_with_one_chunk_left():
    assert next_chunk(D("0.0123"), 1, D("0.001"), D("0.005")) == D("0.012")


def test_next_chunk_below_the_minimum_is_zero():
    assert next_chunk(D("0.004"), 3, D("0.001"), D("0.005")) == 0


@given(value=st.decimals(min_value=0, max_value=10**9, places=10), step=steps)
def test_rounding_to_the_step_stays_on_the_grid_and_within_one_step(value, step):
    down, up = floor_to_step(value, step), ceil_to_step(value, step)
    assert down % step == 0 and up % step == 0
    assert down <= value <= up
    assert up - down in (0, step)


def test_rounding_is_exact_with_many_digits():
    value = D("0.0019999999999999999999999999999999")
    assert floor_to_step(value, D("0.001")) == D("0.001")


@pytest.mark.parametrize("step", [D("0"), D("-0.1"), D("NaN"), D("Infinity")])
def test_a_nonsense_step_is_refused(step):
    with pytest.raises(ValueError):
        floor_to_step(D("1"), step)
