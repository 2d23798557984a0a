"""The aged close policy after failures: what a failing close leads to, for every input."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.execution.aged_close import (
    CLOSES,
    AlertKind,
    AmountGrid,
    CloseAction,
    CloseRules,
    EpisodeFacts,
    backoff_s,
    close_failing_alert_due,
    next_action,
)
from workers.execution.chunks import floor_to_step, smallest_order

D = Decimal
T0 = datetime(2026, 1, 1, tzinfo=UTC)
RULES = CloseRules()
BTC = AmountGrid(step=D("0.001"), minimum=D("0.005"))
ETH = AmountGrid(step=D("0.01"), minimum=D("0.01"))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def long_at_target(size: str, failed: int = 0, **fields) -> EpisodeFacts:
    """A long whose target (100) the price 101 is past, ``failed`` closes so far (the
    last at ``T0``)."""
    return EpisodeFacts(
        side="long",
        size=D(size),
        target_price=D("100"),
        failures=failed,
        last_attempt_at=at(0) if failed else None,
        **fields,
    )


class Sweeps:
    """The sweep and the close task as they apply the policy, every close refused:
    a failure is recorded when a close is sent, alerts and widenings as decided."""

    def __init__(self, episode: EpisodeFacts, grid: AmountGrid, rules: CloseRules = RULES):
        self.episode, self.grid, self.rules = episode, grid, rules
        self.closes: list[tuple[float, CloseAction, Decimal]] = []
        self.alerts: list[tuple[int, AlertKind]] = []
        self.widenings: list[tuple[Decimal, Decimal]] = []
        self.gave_up = False

    def run(self, seconds: float, every_s: float = 0.5, price: str = "101") -> Sweeps:
        for tick in range(int(seconds / every_s) + 1):
            now = at(tick * every_s)
            decision = next_action(self.episode, self.grid, D(price), now, self.rules)
            if decision.alert is not None:
                self.alerts.append((self.episode.failures, decision.alert))
                self.episode = replace(self.episode, alerted_failures=self.episode.failures)
            if decision.extra_tolerance_percent != self.episode.extra_tolerance_percent:
                self.widenings.append(
                    (self.episode.extra_tolerance_percent, decision.extra_tolerance_percent)
                )
                self.episode = replace(
                    self.episode, extra_tolerance_percent=decision.extra_tolerance_percent
                )
            if decision.action == CloseAction.GIVE_UP:
                self.gave_up = True
                return self
            if decision.sends_order:
                assert decision.amount is not None
                self.closes.append((tick * every_s, decision.action, decision.amount))
                self.episode = replace(
                    self.episode, failures=self.episode.failures + 1, last_attempt_at=now
                )
        return self


# --- the operator's two failures, as the policy decides them --------------------------------


def test_a_position_too_small_to_split_is_closed_whole_again_after_three_failures():
    # Given BTC 0.005 (the minimum: it cannot be split) after three refused closes,
    # the price past its target and the backoff over
    episode = long_at_target("0.005", 3)
    # When the policy is asked
    decision = next_action(episode, BTC, D("101"), at(3600), RULES)
    # Then it sends the whole close again: nothing replaces a close that is due
    assert (decision.action, decision.amount) == (CloseAction.CLOSE_WHOLE, D("0.005"))


def test_a_small_position_keeps_getting_closes_and_no_widening_that_changes_nothing():
    # Given the same small position whose closes all fail, swept every half second
    sweeps = Sweeps(long_at_target("0.005"), BTC).run(120)
    # Then every attempt is a whole close, spaced by a growing backoff
    assert {action for _, action, _ in sweeps.closes} == {CloseAction.CLOSE_WHOLE}
    gaps = [b[0] - a[0] for a, b in zip(sweeps.closes, sweeps.closes[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[0] >= RULES.backoff_base_s
    # and each widening really widens
    assert all(after > before for before, after in sweeps.widenings)


def test_a_splittable_position_whose_closes_keep_failing_backs_off_alerts_and_widens():
    # Given ETH 0.5 whose every close is refused, swept every half second for 40 s
    sweeps = Sweeps(long_at_target("0.5"), ETH).run(40)
    # Then it is not hammered: six attempts, not one per sweep
    assert [t for t, _, _ in sweeps.closes] == [0, 1, 3, 7, 15, 31]
    # closing whole, then in chunks from the third failure
    assert [action for _, action, _ in sweeps.closes] == [CloseAction.CLOSE_WHOLE] * 3 + [
        CloseAction.CLOSE_CHUNK
    ] * 3
    # alerting at three failures and again when chunks keep failing too, when it widens
    assert sweeps.alerts == [(3, AlertKind.CLOSE_FAILING), (6, AlertKind.CLOSE_FAILING)]
    assert sweeps.widenings == [(D(0), D(2))]


def test_the_policy_gives_up_with_a_critical_alert_after_its_last_threshold():
    sweeps = Sweeps(long_at_target("0.5"), ETH, replace(RULES, backoff_cap_s=2)).run(600)
    assert sweeps.gave_up and len(sweeps.closes) == RULES.failures_before_give_up
    # widened a step per failure from the sixth, to the cap, never past it
    assert sweeps.widenings[-1][1] == D(20)
    assert [before for before, _ in sweeps.widenings] == [D(2) * n for n in range(10)]
    decision = next_action(
        replace(sweeps.episode, last_attempt_at=at(0)), ETH, D("101"), at(10**6), RULES
    )
    assert (decision.action, decision.alert) == (CloseAction.GIVE_UP, AlertKind.UNCLOSABLE)


def test_dust_below_the_minimum_order_is_given_up_at_once():
    decision = next_action(long_at_target("0.003"), BTC, D("101"), at(0), RULES)
    assert (decision.action, decision.alert) == (CloseAction.GIVE_UP, AlertKind.UNCLOSABLE)
    assert "minimum order size" in decision.reason


def test_chunks_are_planned_from_what_is_left_after_each_fill():
    # Given BTC 0.017 after three failures: 3 chunks, each >= 0.005 on the 0.001 grid
    sizes, sent = [D("0.017")], []
    for chunks_closed in range(3):
        episode = long_at_target(str(sizes[-1]), 3, chunks_closed=chunks_closed)
        decision = next_action(episode, BTC, D("101"), at(3600), RULES)
        assert decision.action == CloseAction.CLOSE_CHUNK
        sent.append(decision.amount)
        sizes.append(sizes[-1] - decision.amount)
    assert sent == [D("0.005"), D("0.006"), D("0.006")] and sizes[-1] == 0


def test_a_price_short_of_the_target_holds_and_a_missing_price_too():
    assert next_action(long_at_target("1"), ETH, D("99.9"), at(0), RULES).action == "hold"
    assert next_action(long_at_target("1"), ETH, None, at(0), RULES).action == "hold"


def test_a_widening_due_while_the_target_is_not_reached_is_the_action():
    episode = long_at_target("1", 6)
    decision = next_action(episode, ETH, D("90"), at(3600), RULES)
    assert (decision.action, decision.extra_tolerance_percent) == (CloseAction.WIDEN, D(2))


def test_nonsense_rules_are_refused():
    with pytest.raises(ValueError):
        CloseRules(chunk_count=1)
    with pytest.raises(ValueError):
        CloseRules(backoff_base_s=5, backoff_cap_s=1)


def test_the_rules_come_from_settings():
    from workers.settings import AgedSettings

    rules = CloseRules.from_settings(AgedSettings())
    assert rules == RULES


# --- properties -----------------------------------------------------------------------------

grids = st.sampled_from([BTC, ETH, AmountGrid(D("1"), D("1")), AmountGrid(D("0.1"), D("0"))])
sizes = st.decimals(min_value=0, max_value=50, places=3)
failures = st.integers(min_value=0, max_value=40)
tolerances = st.decimals(min_value=0, max_value=25, places=1)
rules_st = st.builds(
    CloseRules,
    failures_before_alert=st.integers(1, 6),
    failures_before_chunks=st.integers(1, 6),
    failures_before_widen=st.integers(1, 12),
    failures_before_give_up=st.sampled_from([0, 15, 25]),
    chunk_count=st.integers(2, 5),
    backoff_base_s=st.floats(0, 5),
    backoff_cap_s=st.floats(5, 120),
)


@st.composite
def situations(draw):
    side = draw(st.sampled_from(["long", "short"]))
    episode = EpisodeFacts(
        side=side,
        size=draw(sizes),
        target_price=draw(st.none() | st.decimals(min_value=1, max_value=200, places=1)),
        failures=draw(failures),
        last_attempt_at=draw(st.none() | st.just(at(0))),
        base_tolerance_percent=draw(tolerances),
        extra_tolerance_percent=draw(tolerances),
        alerted_failures=draw(failures),
        chunks_closed=draw(st.integers(0, 4)),
    )
    price = draw(st.none() | st.decimals(min_value=1, max_value=200, places=1))
    now = at(draw(st.floats(min_value=0, max_value=200)))
    return episode, draw(grids), price, now, draw(rules_st)


def _reached(episode: EpisodeFacts, price: Decimal | None) -> bool:
    if price is None or episode.target_price is None:
        return False
    return (
        price >= episode.target_price if episode.side == "long" else price <= episode.target_price
    )


def _closable(episode: EpisodeFacts, grid: AmountGrid) -> bool:
    return floor_to_step(episode.size, grid.step) >= smallest_order(grid.step, grid.minimum)


@given(situations())
def test_a_reached_target_always_gets_a_close_unless_backing_off_or_given_up(situation):
    episode, grid, price, now, rules = situation
    decision = next_action(episode, grid, price, now, rules)
    waiting = (
        episode.failures > 0
        and episode.last_attempt_at is not None
        and now < episode.last_attempt_at + timedelta(seconds=backoff_s(episode.failures, rules))
    )
    given_up = rules.failures_before_give_up and episode.failures >= rules.failures_before_give_up
    if _reached(episode, price) and not waiting and not given_up and _closable(episode, grid):
        assert decision.action in CLOSES
    if decision.action in CLOSES:
        assert _reached(episode, price) and not waiting


@given(situations())
def test_a_close_is_on_the_grid_at_least_the_minimum_and_never_more_than_the_position(
    situation,
):
    episode, grid, price, now, rules = situation
    decision = next_action(episode, grid, price, now, rules)
    if decision.action in CLOSES:
        assert decision.amount is not None
        assert decision.amount % grid.step == 0
        assert smallest_order(grid.step, grid.minimum) <= decision.amount <= episode.size


@given(situations())
def test_a_widening_always_raises_the_accepted_loss_and_never_past_the_cap(situation):
    episode, grid, price, now, rules = situation
    decision = next_action(episode, grid, price, now, rules)
    before, after = episode.extra_tolerance_percent, decision.extra_tolerance_percent
    assert after >= before
    if after != before:

        def total(extra: Decimal) -> Decimal:
            return min(episode.base_tolerance_percent + extra, rules.widen_cap_percent)

        assert total(after) > total(before)
        assert episode.failures >= rules.failures_before_widen
    if decision.action == CloseAction.WIDEN:
        assert after > before


@given(situations())
def test_giving_up_is_for_dust_or_the_last_threshold_and_comes_with_the_critical_alert(
    situation,
):
    episode, grid, price, now, rules = situation
    decision = next_action(episode, grid, price, now, rules)
    if decision.action == CloseAction.GIVE_UP:
        assert decision.alert == AlertKind.UNCLOSABLE
        assert not _closable(episode, grid) or (
            rules.failures_before_give_up and episode.failures >= rules.failures_before_give_up
        )


@given(rules=rules_st)
def test_alerts_fire_at_the_first_threshold_and_once_per_escalation(rules):
    # Given an episode whose failures climb one by one, the alert recorded when raised
    alerted, raised_at = 0, []
    for count in range(0, 41):
        if close_failing_alert_due(count, alerted, rules):
            raised_at.append(count)
            alerted = count
    # Then the first alert is at the alert threshold, and later ones only at thresholds past it
    later = {
        threshold
        for threshold in (
            rules.failures_before_chunks,
            rules.failures_before_widen,
            rules.failures_before_give_up,
        )
        if threshold > rules.failures_before_alert
    }
    assert raised_at == sorted({rules.failures_before_alert} | later)


@given(
    count=st.integers(1, 200),
    base=st.floats(0, 10),
    cap=st.floats(10, 600),
)
def test_the_backoff_doubles_up_to_its_cap(count, base, cap):
    rules = CloseRules(backoff_base_s=base, backoff_cap_s=cap)
    assert backoff_s(count, rules) <= cap
    assert backoff_s(count + 1, rules) >= backoff_s(count, rules)
    assert backoff_s(0, rules) == 0
