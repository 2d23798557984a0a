"""Aged episodes and positions as state tables: what can follow what."""

from __future__ import annotations

import pytest

from workers.execution import aged_state, position_state
from workers.execution.aged_state import AgedStatus, IllegalAgedTransition
from workers.execution.position_state import IllegalPositionTransition, PositionStatus


def test_an_ended_episode_can_never_change_again():
    for ended in aged_state.ENDED:
        assert aged_state.ALLOWED_TRANSITIONS[ended] == frozenset()
        # not even its fields: a widening or a failure cannot reach it
        with pytest.raises(IllegalAgedTransition):
            aged_state.check_transition(ended, None)
        with pytest.raises(IllegalAgedTransition):
            aged_state.check_transition(ended, AgedStatus.ACTIVE)


def test_every_current_episode_can_end_in_each_way_when_its_position_closes():
    for current in aged_state.CURRENT:
        for ended in aged_state.ENDED:
            aged_state.check_transition(current, ended)


def test_a_closing_episode_goes_back_to_active_after_a_failure_and_active_is_claimed_again():
    aged_state.check_transition(AgedStatus.CLOSING, AgedStatus.ACTIVE)
    aged_state.check_transition(AgedStatus.ACTIVE, AgedStatus.CLOSING)


def test_an_unclosable_episode_waits_for_a_person_and_is_not_worked_on():
    assert AgedStatus.UNCLOSABLE not in aged_state.TRACKED
    with pytest.raises(IllegalAgedTransition):
        aged_state.check_transition(AgedStatus.UNCLOSABLE, AgedStatus.CLOSING)
    with pytest.raises(IllegalAgedTransition):
        aged_state.check_transition(AgedStatus.UNCLOSABLE, None)


def test_the_table_names_every_status_and_the_sets_split_them():
    assert set(aged_state.ALLOWED_TRANSITIONS) == set(AgedStatus)
    assert aged_state.CURRENT | aged_state.ENDED == set(AgedStatus)
    assert not aged_state.CURRENT & aged_state.ENDED
    assert set(position_state.ALLOWED_TRANSITIONS) == set(PositionStatus)
    assert position_state.HELD | position_state.ENDED == set(PositionStatus)


def test_a_closed_position_is_never_reopened():
    position_state.check_transition(PositionStatus.OPEN, PositionStatus.CLOSED)
    position_state.check_transition(PositionStatus.OPEN, PositionStatus.CLOSED_EXTERNALLY)
    for ended in position_state.ENDED:
        with pytest.raises(IllegalPositionTransition):
            position_state.check_transition(ended, PositionStatus.OPEN)


def test_partial_index_predicates_are_built_from_the_named_sets():
    assert position_state.status_in_sql(aged_state.CURRENT) == (
        "status IN ('active', 'closing', 'unclosable')"
    )
    assert position_state.status_in_sql(position_state.HELD) == "status IN ('open')"
