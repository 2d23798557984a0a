"""The console's pure parts: headroom, distance, stream health, PnL, the chart's geometry,
the checks on its form fields, and how its pages write numbers and durations."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.api.console import chart, measures
from workers.api.console.actions import (
    CancelAction,
    KillSwitchAction,
    LiquidateAction,
    parse_action,
)
from workers.api.console.forms import EventFilter, InvalidField, parse_form
from workers.api.console.pages import Pages, amount, duration, fixed, signed
from workers.exchange.ratelimit import RateLimit

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- rate-limit headroom ---------------------------------------------------------------------


def test_an_unused_bucket_has_its_whole_burst():
    limit = RateLimit(per_s=10, burst=40)
    assert measures.rate_limit_headroom(None, 1_000_000, limit) == 40
    assert measures.rate_limit_headroom(999_000, 1_000_000, limit) == 40


def test_headroom_falls_by_what_was_taken_and_refills_with_time():
    limit = RateLimit(per_s=10, burst=40)  # one unit every 100 ms
    now = 1_000_000
    # 30 units just taken from a full bucket: the arrival time moved 3 s ahead
    assert measures.rate_limit_headroom(now + 3000, now, limit) == pytest.approx(10)
    # A second later 10 more have come back
    assert measures.rate_limit_headroom(now + 3000, now + 1000, limit) == pytest.approx(20)
    # Past the burst: nothing free, never negative
    assert measures.rate_limit_headroom(now + 9000, now, limit) == 0


def _gcra_grants(tat_ms: float | None, now_ms: float, limit: RateLimit, weight: int) -> bool:
    """The limiter's Lua script, in Python: may ``weight`` go now?"""
    tat = now_ms if tat_ms is None or tat_ms < now_ms else tat_ms
    return tat + limit.interval_ms * weight - limit.burst_ms <= now_ms


@given(
    per_s=st.sampled_from([1.0, 5.0, 20.0, 5000.0]),
    burst=st.integers(1, 100),
    ahead_ms=st.one_of(st.none(), st.floats(-5000, 200_000)),
    weight=st.integers(1, 100),
)
def test_the_headroom_shown_is_what_the_limiter_would_grant(per_s, burst, ahead_ms, weight):
    limit = RateLimit(per_s=per_s, burst=burst)
    now = 10_000_000.0
    tat = None if ahead_ms is None else now + ahead_ms
    headroom = measures.rate_limit_headroom(tat, now, limit)
    assert 0 <= headroom <= burst
    grants = _gcra_grants(tat, now, limit, weight)
    if not math.isclose(headroom, weight, rel_tol=1e-9, abs_tol=1e-9):
        assert grants == (headroom >= weight)


# --- distance, streams, PnL -----------------------------------------------------------------


def test_a_long_below_its_target_must_rise_and_a_short_above_it_must_fall():
    long = measures.distance_to_target("long", Decimal("3400"), Decimal("3503.51"))
    assert long == measures.Distance(Decimal("103.51"), Decimal("3.044"), reached=False)
    short = measures.distance_to_target("short", Decimal("3600"), Decimal("3496.50"))
    assert short.move == Decimal("-103.50") and not short.reached


def test_the_target_counts_as_reached_by_the_close_rule():
    assert measures.distance_to_target("long", Decimal("3504"), Decimal("3503.51")).reached
    assert measures.distance_to_target("long", Decimal("3503.51"), Decimal("3503.51")).reached
    assert measures.distance_to_target("short", Decimal("3496"), Decimal("3496.5")).reached
    assert not measures.distance_to_target("short", Decimal("3497"), Decimal("3496.5")).reached


def test_no_price_or_no_target_is_no_distance():
    assert measures.distance_to_target("long", None, Decimal("1")) is None
    assert measures.distance_to_target("long", Decimal("1"), None) is None
    assert measures.distance_to_target("long", Decimal("0"), Decimal("1")) is None


def test_stream_health_is_per_account_and_stale_after_the_stale_window():
    hash_ = {
        "binance:orders": "1000.0",
        "binance:tickers": "870.0",
        "bybit:orders": "999.0",
        "junk": "1",
        "binance:bad": "not a time",
    }
    streams = measures.stream_health(hash_, "binance", now_s=1000.5, stale_after_s=10)
    assert [(s.stream, s.stale) for s in streams] == [("orders", False), ("tickers", True)]
    assert streams[1].age_s == pytest.approx(130.5)
    assert measures.stream_health(hash_, "okx", now_s=1000, stale_after_s=10) == []


def test_unrealised_pnl_uses_the_books_math_for_both_sides():
    long = measures.unrealised("long", Decimal("0.1"), Decimal("3500"), Decimal("3450"))
    assert long == measures.Unrealised(Decimal("-5.0"), Decimal("-1.43"))
    short = measures.unrealised("short", Decimal("0.1"), Decimal("3500"), Decimal("3450"))
    assert short.pnl == Decimal("5.0") and short.roi_percent == Decimal("1.43")
    assert measures.unrealised("long", Decimal("1"), Decimal("1"), None) is None


# --- the chart ------------------------------------------------------------------------------


def test_the_chart_maps_a_higher_price_higher_and_time_to_the_right():
    drawn = chart.price_against_target(
        [chart.Point(at(0), Decimal("100")), chart.Point(at(10), Decimal("110"))],
        [chart.Point(at(0), Decimal("120"))],
        [],
        at(0),
        at(10),
    )
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in drawn.price_points.split())
    assert x0 == chart.LEFT and x1 == chart.WIDTH - chart.RIGHT
    assert y1 < y0  # SVG's y grows downwards
    # The target is a step held to the end, above both prices
    target_ys = {float(p.split(",")[1]) for p in drawn.target_points.split()}
    assert len(target_ys) == 1 and target_ys.pop() < y1
    assert drawn.last is not None and (drawn.last.x, drawn.last.y) == (x1, y1)
    for x, y in ((x0, y0), (x1, y1)):
        assert chart.LEFT <= x <= chart.WIDTH - chart.RIGHT
        assert chart.TOP <= y <= chart.HEIGHT - chart.BOTTOM


def test_the_target_in_force_at_the_windows_start_is_drawn_from_there():
    drawn = chart.price_against_target(
        [],
        [chart.Point(at(-60), Decimal("120")), chart.Point(at(5), Decimal("118"))],
        [],
        at(0),
        at(10),
    )
    points = drawn.target_points.split()
    # 120 from the start to 5 s, then 118 to the end: two steps, four corners
    assert len(points) == 4
    assert float(points[0].split(",")[0]) == chart.LEFT


def test_nothing_recorded_is_an_empty_chart_and_one_price_is_a_dot():
    assert chart.price_against_target([], [], [], at(0), at(10)).empty
    single = chart.price_against_target([chart.Point(at(5), Decimal("7"))], [], [], at(0), at(10))
    assert not single.empty and single.price_count == 1 and single.last is not None


def test_markers_outside_the_window_are_left_out():
    drawn = chart.price_against_target(
        [chart.Point(at(1), Decimal("10"))],
        [],
        [
            chart.Marker(at(2), Decimal("11"), "target reached"),
            chart.Marker(at(99), Decimal("12"), "x"),
        ],
        at(0),
        at(10),
    )
    assert [m.label for m in drawn.markers] == ["target reached"]


# --- form fields ------------------------------------------------------------------------------


def test_a_form_is_one_value_per_field_in_utf8():
    assert parse_form(b"reason=a+b&state=on") == {"reason": "a b", "state": "on"}
    with pytest.raises(InvalidField, match="more than once"):
        parse_form(b"state=on&state=off")
    with pytest.raises(InvalidField, match="not UTF-8"):
        parse_form(b"reason=%ff")
    with pytest.raises(InvalidField, match="more than 8 fields"):
        parse_form("&".join(f"f{i}=1" for i in range(9)).encode())


@pytest.mark.parametrize(
    ("kind", "form", "action"),
    [
        (
            "kill_switch",
            {"state": "on", "reason": " incident "},
            KillSwitchAction(True, "incident"),
        ),
        ("kill_switch", {"state": "off", "reason": "fixed"}, KillSwitchAction(False, "fixed")),
        ("cancel", {"client_order_id": "xqopen-abc"}, CancelAction("xqopen-abc")),
        ("liquidate", {"reason": "drill", "csrf_token": "t"}, LiquidateAction("drill")),
    ],
)
def test_a_valid_form_is_the_action_it_names(kind, form, action):
    assert parse_action(kind, form) == action


@pytest.mark.parametrize(
    ("kind", "form", "field"),
    [
        ("kill_switch", {"state": "ON", "reason": "x"}, "state"),
        ("kill_switch", {"reason": "x"}, "state"),
        ("kill_switch", {"state": "on"}, "reason"),
        ("kill_switch", {"state": "on", "reason": "x\u202ey"}, "reason"),
        ("kill_switch", {"state": "on", "reason": "x" * 201}, "reason"),
        ("kill_switch", {"state": "on", "reason": "x", "extra": "1"}, "extra"),
        ("cancel", {"client_order_id": ""}, "client_order_id"),
        ("cancel", {"client_order_id": "a" * 37}, "client_order_id"),
        ("cancel", {"client_order_id": "x y"}, "client_order_id"),
        ("liquidate", {"reason": ""}, "reason"),
        ("shutdown", {}, "action"),
    ],
)
def test_an_invalid_field_is_named(kind, form, field):
    with pytest.raises(InvalidField) as refused:
        parse_action(kind, form)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("query", "arguments"),
    [
        ({}, {"limit": 200}),
        ({"kind": "signal", "id": "bot-1 x"}, {"limit": 200, "signal_id": "bot-1 x"}),
        ({"kind": "order", "id": "42"}, {"limit": 200, "order": "42"}),
        ({"kind": "position", "id": "7", "type": "order_filled"},
         {"limit": 200, "position_id": 7, "types": ("order_filled",)}),
        ({"kind": "episode", "id": "3"}, {"limit": 200, "aged_id": 3}),
    ],
)  # fmt: skip
def test_an_event_filter_becomes_the_reports_query(query, arguments):
    assert EventFilter.parse(query).query() == arguments


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"kind": "user", "id": "1"}, "kind"),
        ({"id": "1"}, "kind"),
        ({"kind": "order"}, "id"),
        ({"kind": "episode", "id": "-1"}, "id"),
        ({"kind": "order", "id": "<b>"}, "id"),
        ({"kind": "signal", "id": "a\nb"}, "id"),
        ({"type": "Order Filled"}, "type"),
    ],
)
def test_an_invalid_event_filter_is_named(query, field):
    with pytest.raises(InvalidField) as refused:
        EventFilter.parse(query)
    assert refused.value.field == field


# --- how pages write values -------------------------------------------------------------------


def test_numbers_and_durations_read_as_an_operator_expects():
    assert amount(Decimal("3500.000")) == "3500"
    assert amount(None) == "—"
    assert signed(Decimal("53.510")) == "+53.51"
    assert signed(Decimal("-0.5")) == "−0.5"
    assert fixed(Decimal("0")) == "0.00"
    assert fixed(Decimal("-5.004")) == "−5.00"
    assert fixed(Decimal("12.3")) == "+12.30"
    assert [duration(s) for s in (5, 192, 7500, 3 * 86400 + 3600)] == [
        "5s",
        "3m 12s",
        "2h 05m",
        "3d 1h",
    ]


def test_every_template_escapes_what_it_prints():
    pages = Pages(refresh_s=5)
    assert pages.environment.autoescape is True
    template = pages.environment.from_string("<td>{{ value }}</td>")
    assert template.render(value="<img src=x onerror=alert(1)>") == (
        "<td>&lt;img src=x onerror=alert(1)&gt;</td>"
    )
