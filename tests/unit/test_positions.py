"""Position book math: average entries, realised PnL on reduce and flip, PnL and ROI."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.execution.positions import (
    PositionState,
    apply_fill,
    roi_percent,
    side_of,
    unrealized_pnl,
)

D = Decimal
FLAT = PositionState()

amounts = st.decimals(min_value=D("0.001"), max_value=1000, places=3)
prices = st.decimals(min_value=D("0.01"), max_value=100_000, places=2)
fills = st.lists(st.tuples(st.sampled_from(["buy", "sell"]), amounts, prices), max_size=12)


def run(fills_list, start=FLAT):
    state = start
    for side, amount, price in fills_list:
        state = apply_fill(state, side, amount, price)
    return state


def test_opening_a_long_sets_size_and_entry():
    state = apply_fill(FLAT, "buy", D("2"), D("100"))
    assert state == PositionState(D("2"), D("100"), D(0))
    assert state.side == "long"


def test_adding_averages_the_entry():
    state = run([("buy", D("1"), D("100")), ("buy", D("3"), D("120"))])
    assert state.size == D("4") and state.entry_price == D("115")


def test_reducing_realises_pnl_at_the_entry_and_keeps_it():
    state = run([("buy", D("4"), D("100")), ("sell", D("1"), D("110"))])
    assert state == PositionState(D("3"), D("100"), D("10"))


def test_a_short_gains_when_the_price_falls():
    state = run([("sell", D("2"), D("100")), ("buy", D("2"), D("90"))])
    assert state == PositionState(D(0), D(0), D("20"))


def test_a_fill_larger_than_the_position_flips_it_at_the_fill_price():
    # Given a long of 1 at 100, when 3 are sold at 105
    state = run([("buy", D("1"), D("100")), ("sell", D("3"), D("105"))])
    # Then the long's 5 is realised and a short of 2 opens at 105
    assert state == PositionState(D("-2"), D("105"), D("5"))
    assert state.side == "short"


def test_fees_reduce_realised_pnl():
    state = apply_fill(FLAT, "buy", D("1"), D("100"), fee=D("0.1"))
    assert state.realized_pnl == D("-0.1")


def test_unrealised_pnl_and_roi_follow_seed_002():
    long = PositionState(D("2"), D("100"))
    short = PositionState(D("-2"), D("100"))
    assert unrealized_pnl(long, D("110")) == D("20")
    assert unrealized_pnl(short, D("110")) == D("-20")
    assert roi_percent(long, D("110")) == D("10")
    assert roi_percent(short, D("90")) == D("10")
    assert unrealized_pnl(FLAT, D("5")) == 0 and roi_percent(FLAT, D("5")) == 0


def test_side_of():
    assert (side_of(D("1")), side_of(D("-0.1")), side_of(D(0))) == ("long", "short", None)


@pytest.mark.parametrize(
    ("side", "amount", "price"),
    [
        ("buy", "0", "1"),
        ("buy", "-1", "1"),
        ("buy", "1", "0"),
        ("hold", "1", "1"),
        ("buy", "NaN", "1"),
        ("sell", "1", "Infinity"),
    ],
)
def test_nonsense_fills_are_refused(side, amount, price):
    with pytest.raises(ValueError):
        apply_fill(FLAT, side, D(amount), D(price))


@given(opens=st.lists(amounts, min_size=1, max_size=6), price=prices, short=st.booleans())
def test_opening_then_closing_at_the_same_price_realises_nothing(opens, price, short):
    open_side, close_side = ("sell", "buy") if short else ("buy", "sell")
    state = run([(open_side, amount, price) for amount in opens])
    state = apply_fill(state, close_side, abs(state.size), price)
    assert state == PositionState(D(0), D(0), D(0))


def _mirror(fills_list):
    return [
        ("sell" if side == "buy" else "buy", amount, price) for side, amount, price in fills_list
    ]


@given(fills_list=fills, mark=prices)
def test_a_short_mirrors_a_long(fills_list, mark):
    long, short = run(fills_list), run(_mirror(fills_list))
    assert short.size == long.size.copy_negate()
    assert short.entry_price == long.entry_price
    # copy_negate: unary minus would round to the context's 28 digits
    assert short.realized_pnl == long.realized_pnl.copy_negate()
    assert unrealized_pnl(short, mark) == unrealized_pnl(long, mark).copy_negate()


@given(fills_list=fills, mark=prices)
def test_realised_plus_unrealised_equals_the_cash_flows(fills_list, mark):
    # Total PnL must not depend on how it is split: what we paid and received for
    # every fill, plus what the position left is worth at the mark.
    state = run(fills_list)
    cash = sum(
        (-(amount if side == "buy" else -amount) * price for side, amount, price in fills_list),
        D(0),
    )
    total = state.realized_pnl + unrealized_pnl(state, mark)
    assert abs(total - (cash + state.size * mark)) < D("1e-18")


@given(fills_list=fills)
def test_the_size_is_the_sum_of_signed_fills_and_flat_means_no_entry(fills_list):
    state = run(fills_list)
    assert state.size == sum(
        ((amount if side == "buy" else -amount) for side, amount, _ in fills_list), D(0)
    )
    assert (state.entry_price == 0) == (state.size == 0)
