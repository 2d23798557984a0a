"""Recovery reconciliation: orphans adopted, conflicts corrected, outside closes noticed."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.execution.reconcile import (
    Adopt,
    BookPosition,
    ClosedExternally,
    Correct,
    ExceedsBook,
    ExchangePosition,
    apply_actions,
    reconcile,
)

D = Decimal
BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"


def book(symbol=BTC, size="1", entry="100", account="binance", id=1):
    return BookPosition(account, symbol, D(size), D(entry), id)


def ex(symbol=BTC, size="1", entry="100", account="binance"):
    return ExchangePosition(account, symbol, D(size), None if entry is None else D(entry))


def test_matching_positions_need_nothing():
    assert reconcile([book()], [ex()]) == []


def test_a_position_opened_by_hand_is_adopted():
    orphan = ex(ETH, "-3", "2000")
    assert reconcile([book()], [ex(), orphan]) == [Adopt(orphan)]
    assert Adopt(orphan).exchange_position is orphan


def test_a_position_closed_by_hand_is_closed_externally():
    row = book()
    assert reconcile([row], []) == [ClosedExternally(row)]


def test_bybit_zero_size_rows_count_as_flat():
    row = book()
    assert reconcile([row], [ex(size="0", entry="0")]) == [ClosedExternally(row)]


def test_a_size_changed_by_hand_beyond_one_percent_is_corrected():
    row, truth = book(size="1"), ex(size="0.5")
    assert reconcile([row], [truth]) == [Correct(row, truth, ("size",))]


def test_differences_within_the_tolerance_are_left_alone():
    assert reconcile([book(size="1", entry="100")], [ex(size="1.009", entry="100.9")]) == []


def test_an_entry_price_off_by_more_than_one_percent_is_corrected():
    row, truth = book(entry="100"), ex(entry="102")
    assert reconcile([row], [truth]) == [Correct(row, truth, ("entry_price",))]


def test_a_flipped_side_is_more_than_the_book_knows():
    row, truth = book(size="1"), ex(size="-1")
    assert reconcile([row], [truth]) == [ExceedsBook(row, truth)]


def test_an_exchange_position_larger_than_the_book_is_never_a_quiet_correction():
    # Given the book holds 0.3 and the exchange 0.6 (an order the book does not know filled)
    row, truth = book(size="0.3"), ex(size="0.6")
    [action] = reconcile([row], [truth])
    # Then it is an excess to alert on, with the difference, and the book is left as it is
    assert action == ExceedsBook(row, truth)
    assert action.difference == Decimal("0.3")
    assert apply_actions([row], [action]) == [row]


def test_an_exchange_position_smaller_than_the_book_is_corrected():
    row, truth = book(size="0.6"), ex(size="0.3")
    assert reconcile([row], [truth]) == [Correct(row, truth, ("size",))]


def test_an_exchange_without_entry_price_is_not_compared_on_it():
    assert reconcile([book(entry="100")], [ex(entry=None)]) == []


def test_accounts_not_fetched_are_left_alone():
    # Given the bybit fetch failed this round
    rows = [book(account="binance"), book(account="bybit", id=2)]
    actions = reconcile(rows, [ex(account="binance")], fetched_accounts={"binance"})
    # Then bybit's position is not declared closed
    assert actions == []


def test_two_open_rows_for_one_symbol_are_refused_clearly():
    with pytest.raises(ValueError, match="hedge mode"):
        reconcile([], [ex(size="1"), ex(size="-1")])


def test_actions_come_sorted_by_account_and_symbol():
    actions = reconcile([book(ETH, account="bybit")], [ex(BTC, account="binance")])
    assert [type(action) for action in actions] == [Adopt, ClosedExternally]


accounts = st.sampled_from(["binance", "bybit"])
symbols = st.sampled_from([BTC, ETH, "SOL/USDT:USDT", "XRP/USDT:USDT"])
sizes = st.decimals(min_value=-50, max_value=50, places=3)
entries = st.decimals(min_value=D("0.01"), max_value=100_000, places=2)


@st.composite
def positions(draw, factory):
    keys = draw(st.lists(st.tuples(accounts, symbols), unique=True, max_size=8))
    return [factory(account, symbol, draw(sizes), draw(entries)) for account, symbol in keys]


def _book_factory(account, symbol, size, entry):
    return BookPosition(account, symbol, size, entry, f"{account}:{symbol}")


@given(
    ours=positions(_book_factory),
    theirs=positions(ExchangePosition),
    tolerance=st.sampled_from([D(0), D("0.5"), D(1), D(5)]),
)
def test_applying_the_actions_makes_the_book_match_the_exchange(ours, theirs, tolerance):
    actions = reconcile(ours, theirs, tolerance)
    repaired = apply_actions(ours, actions)
    truth = {p.key: p for p in theirs if p.size != 0}
    # An excess is alerted, not repaired: those rows stay as the book had them
    exceeding = {action.book.key for action in actions if isinstance(action, ExceedsBook)}
    kept = {row.key: row for row in ours if row.key in exceeding}
    assert {row.key for row in repaired} == set(truth)
    for row in repaired:
        if row.key in exceeding:
            assert row == kept[row.key]
            continue
        other = truth[row.key]
        assert (row.size > 0) == (other.size > 0)
        assert abs(row.size - other.size) * 100 <= abs(other.size) * tolerance
        assert abs(row.entry_price - other.entry_price) * 100 <= other.entry_price * tolerance
        if tolerance == 0:
            assert (row.size, row.entry_price) == (other.size, other.entry_price)


@given(ours=positions(_book_factory), theirs=positions(ExchangePosition))
def test_a_repaired_book_needs_no_further_repair(ours, theirs):
    repaired = apply_actions(ours, reconcile(ours, theirs))
    assert all(isinstance(action, ExceedsBook) for action in reconcile(repaired, theirs))
