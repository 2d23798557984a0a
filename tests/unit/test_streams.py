"""The stream holder's pure rules: backoff, liveness, stale spells, watched symbols, and when
a pushed price reaches an aged target."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.execution import streams as rules

# --- backoff --------------------------------------------------------------------------------


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    base_s=st.floats(min_value=0.01, max_value=10),
    cap_s=st.floats(min_value=0.01, max_value=600),
    jitter=st.floats(min_value=0, max_value=1),
)
def test_a_reconnect_waits_between_half_and_all_of_its_capped_schedule(
    attempt, base_s, cap_s, jitter
):
    schedule = min(cap_s, base_s * 2 ** min(attempt - 1, 60))
    delay = rules.reconnect_delay_s(attempt, base_s, cap_s, jitter)
    assert schedule / 2 <= delay <= schedule * (1 + 1e-12)
    assert delay <= cap_s * (1 + 1e-12)


def test_the_schedule_doubles_from_the_base_up_to_the_cap():
    # Given base 0.5 s and cap 30 s, with the jitter at its top (no reduction)
    delays = [rules.reconnect_delay_s(n, 0.5, 30, 1.0) for n in range(1, 10)]
    # Then 0.5, 1, 2, ... until the cap holds it
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    # And the jitter at its bottom halves each
    assert rules.reconnect_delay_s(3, 0.5, 30, 0.0) == 1


@pytest.mark.parametrize("attempt, jitter", [(0, 0.5), (-1, 0.5), (1, -0.1), (1, 1.1)])
def test_an_attempt_below_one_or_a_jitter_outside_the_unit_interval_is_refused(attempt, jitter):
    with pytest.raises(ValueError):
        rules.reconnect_delay_s(attempt, 0.5, 30, jitter)


def test_the_count_starts_again_only_after_a_connection_that_stayed_live_a_stale_window():
    # A connection that never became live, or dropped quickly: the backoff grows
    assert rules.next_attempt(0, None, 10) == 1
    assert rules.next_attempt(3, None, 10) == 4
    assert rules.next_attempt(3, 9.9, 10) == 4
    # One that delivered for a whole stale window was a working one
    assert rules.next_attempt(7, 10, 10) == 1


# --- liveness -------------------------------------------------------------------------------


def test_a_socket_is_alive_while_it_delivered_any_frame_within_the_stale_window():
    assert rules.is_alive(now_s=100, last_frame_s=95, stale_after_s=10)
    assert rules.is_alive(now_s=100, last_frame_s=90, stale_after_s=10)
    assert not rules.is_alive(now_s=100, last_frame_s=89.9, stale_after_s=10)
    # Never heard from: not alive
    assert not rules.is_alive(now_s=100, last_frame_s=None, stale_after_s=10)


@given(stale_after_s=st.floats(min_value=0.1, max_value=3600))
def test_pings_come_often_enough_that_a_healthy_idle_socket_never_looks_stale(stale_after_s):
    # Given pings every keep-alive interval, answered: two may go missing in a stale window
    every_s = rules.keepalive_interval_s(stale_after_s)
    assert 3 * every_s <= stale_after_s * (1 + 1e-12)
    # And ccxt's own pong watchdog fires only well after the holder's stale verdict
    assert every_s * rules.CCXT_PONG_MISSES > stale_after_s


def test_a_stale_spell_begins_once():
    # Given no evidence of life since t=0 and a 10 s window
    assert not rules.stale_spell_begins(10, 0, 10, in_spell=False)
    # When the window has passed, the spell begins (the moment of its one alert)
    assert rules.stale_spell_begins(10.5, 0, 10, in_spell=False)
    # And while the spell lasts it does not begin again
    assert not rules.stale_spell_begins(60, 0, 10, in_spell=True)


def test_a_lease_is_renewed_three_times_per_lifetime():
    assert rules.lease_renew_interval_s(9) == 3


# --- prices ---------------------------------------------------------------------------------


def test_the_price_stream_watches_held_and_aged_symbols_once_each_sorted():
    assert rules.watched_symbols(["ETH", "BTC"], ["BTC", "SOL"]) == ("BTC", "ETH", "SOL")
    assert rules.watched_symbols([], []) == ()


@dataclass(frozen=True)
class Target:
    aged_id: int
    side: str
    target_price: Decimal


def test_a_pushed_price_reaches_a_longs_target_at_or_above_and_a_shorts_at_or_below():
    targets = [
        Target(1, "long", Decimal("100")),
        Target(2, "short", Decimal("90")),
        Target(3, "long", Decimal("120")),
    ]
    assert rules.reached_targets(targets, Decimal("100")) == (1,)
    assert rules.reached_targets(targets, Decimal("90")) == (2,)
    assert rules.reached_targets(targets, Decimal("95")) == ()
    assert rules.reached_targets(targets, Decimal("125")) == (1, 3)


@given(
    side=st.sampled_from(["long", "short"]),
    target=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1e6"), places=4),
    price=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1e6"), places=4),
)
def test_a_target_is_reached_exactly_when_the_sweep_would_call_it_reached(side, target, price):
    from workers.execution.aged import target_reached

    reached = rules.reached_targets([Target(7, side, target)], price) == (7,)
    assert reached == target_reached(side, price, target)


def test_a_close_is_asked_for_again_only_after_the_gate_interval():
    gate = rules.TriggerGate(retry_after_s=1.0)
    # Never asked: due
    assert gate.due([1, 2], {}, now_s=10) == (1, 2)
    # Asked for 1 half a second ago, for 2 a second ago
    assert gate.due([1, 2], {1: 9.5, 2: 9.0}, now_s=10) == (2,)
