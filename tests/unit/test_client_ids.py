"""Client order ids: valid on both exchanges, stable forever, distinct per signal and leg."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.execution.client_ids import (
    BINANCE_CLIENT_ID,
    BYBIT_CLIENT_ID,
    client_order_id,
    leg_of,
)

signal_ids = st.text(min_size=1, max_size=300)
legs = st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True)
USED_LEGS = ["open", "close", "close2", "chunk1", "chunk3", "liq", "aged1", "aged12"]


@given(signal_id=signal_ids, leg=legs)
def test_every_id_is_valid_on_binance_and_bybit(signal_id, leg):
    cid = client_order_id(signal_id, leg)
    assert BINANCE_CLIENT_ID.fullmatch(cid)
    assert BYBIT_CLIENT_ID.fullmatch(cid)
    assert len(cid) <= 36


@given(signal_id=signal_ids, leg=legs)
def test_the_same_signal_and_leg_always_give_the_same_id(signal_id, leg):
    assert client_order_id(signal_id, leg) == client_order_id(signal_id, leg)


@given(signal_id=signal_ids, legs_pair=st.lists(legs, min_size=2, max_size=2, unique=True))
def test_different_legs_of_one_signal_never_share_an_id(signal_id, legs_pair):
    first, second = legs_pair
    assert client_order_id(signal_id, first) != client_order_id(signal_id, second)


@given(pair=st.lists(signal_ids, min_size=2, max_size=2, unique=True), leg=legs)
def test_different_signals_never_share_an_id(pair, leg):
    assert client_order_id(pair[0], leg) != client_order_id(pair[1], leg)


@given(signal_id=signal_ids, leg=legs)
def test_the_leg_is_readable_back_from_the_id(signal_id, leg):
    cid = client_order_id(signal_id, leg)
    assert cid.startswith(f"xq{leg}-")
    assert leg_of(cid) == leg


def test_ids_are_pinned_across_versions():
    # Given ids already sent to exchanges by an earlier release
    # Then this release derives exactly the same ones (a change would resubmit live orders)
    assert client_order_id("sig-123", "open") == "xqopen-hybc267byov6ryase6itcpqavjo6a"
    assert client_order_id("sig-123", "chunk3") == "xqchunk3-hybc267byov6ryase6itcpqavjo"


def test_ids_are_the_same_in_another_process():
    # hash() would differ per process (PYTHONHASHSEED); the derivation must not
    code = (
        "from workers.execution.client_ids import client_order_id;"
        "print(client_order_id('процесс-✓', 'aged3'))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert other.stdout.strip() == client_order_id("процесс-✓", "aged3")


def test_every_leg_execq_uses_gets_a_distinct_id():
    ids = {client_order_id("one-signal", leg) for leg in USED_LEGS}
    assert len(ids) == len(USED_LEGS)


@pytest.mark.parametrize("leg", ["", "Open", "chunk-1", "x" * 13, "lég", "close 2", None])
def test_a_malformed_leg_is_refused(leg):
    with pytest.raises(ValueError, match="leg"):
        client_order_id("sig", leg)


def test_an_empty_signal_id_is_refused():
    with pytest.raises(ValueError, match="signal_id"):
        client_order_id("", "open")


@pytest.mark.parametrize("foreign", ["", "manual-order-1", "x-AAA", "xqopen-short", "web_12345"])
def test_ids_execq_did_not_make_have_no_leg(foreign):
    assert leg_of(foreign) is None
