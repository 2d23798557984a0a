"""The aged-phase sweep: detect aged positions, move phases, apply the close policy.

Every few seconds (``aged_phase_sweep``): positions past their maximum age
start an episode; phases, tolerances and targets (on the market's tick grid)
follow the schedule; one ``fetch_tickers`` per exchange gives the prices. The
first price seen at or past a target is recorded (close latency is measured
from it). Then the close policy (``workers.execution.aged_close``) decides
for each episode, and the sweep applies its decision: raise the alert,
widen the accepted loss, claim the close (``active -> closing``; the caller
sends ``close_aged_position``), or give up. Every write is a guarded one
(``workers.store.aged.write_episode``): an episode another writer changed
meanwhile is left for the next sweep.

With a prices stream, the holder asks :func:`close_on_pushed_price` as each
price of a watched symbol (:func:`aged_targets`) arrives: the same policy
(``_apply_policy``) for the episodes whose target that price reached, so a
close is claimed without waiting for the sweep. The sweep stays the safety
net and still reads the tickers every interval; when both see a crossing at
once, the guarded claim (``active -> closing``) lets exactly one of them
through. The crossing's and the claim's events say which saw it
(``"trigger": "stream"`` or ``"sweep"``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, literal, select, text
from sqlalchemy.dialects.postgresql import insert

from workers.app import app
from workers.exchange import gateway
from workers.exchange.errors import VenueError
from workers.exchange.prices import cache_prices, find_market
from workers.exchange.reads import read_with_retries
from workers.execution.aged import (
    AgedAssessment,
    AgedPhase,
    AgedPolicy,
    PositionSide,
    assess,
    target_reached,
)
from workers.execution.aged_close import (
    AlertKind,
    AmountGrid,
    CloseAction,
    CloseDecision,
    CloseRules,
    next_action,
)
from workers.execution.aged_state import CURRENT, TRACKED, AgedStatus
from workers.execution.position_state import HELD, status_in_sql, status_values
from workers.flows.aged import episode_facts, give_up
from workers.settings import Settings
from workers.store.aged import AgedView, aged_ids, view_of, write_episode
from workers.store.db import session_scope
from workers.store.events import raise_alert, record_event
from workers.store.models import AgedPosition, Position

logger = logging.getLogger("execq.aged")

_AGED = AgedPosition.__table__
_POSITIONS = Position.__table__


def _json_policy(policy: AgedPolicy) -> dict[str, str]:
    return {name: str(value) for name, value in vars(policy).items()}


# --- market metadata ----------------------------------------------------------------------


class _Markets:
    """Market metadata for one sweep, read through one account per exchange and mode
    (they all see the same markets), each market once."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._markets: dict[tuple[str, str, str], dict[str, Any] | None] = {}
        # Venues whose markets could not be read: not asked again in this sweep (a first
        # read in a process loads the markets, with retries; one such wait per sweep).
        self._unreachable: set[tuple[str, str]] = set()

    def venue(self, account: str) -> tuple[str, str]:
        configured = self._settings.account(account)
        return configured.ccxt_class, configured.mode

    def reader(self, account: str) -> str:
        """The account whose client reads for every account of this one's venue."""
        venue = self.venue(account)
        return min(a.name for a in self._settings.accounts if (a.ccxt_class, a.mode) == venue)

    def _market(self, account: str, symbol: str) -> dict[str, Any] | None:
        venue = self.venue(account)
        key = (*venue, symbol)
        if key not in self._markets:
            if venue in self._unreachable:
                return None
            try:
                self._markets[key] = find_market(self.reader(account), symbol)
            except VenueError as exc:
                self._unreachable.add(venue)
                logger.warning("aged sweep: markets of %s: %s", account, exc.describe())
                return None
        return self._markets[key]

    def price_tick(self, account: str, symbol: str) -> Decimal | None:
        market = self._market(account, symbol) or {}
        tick = (market.get("precision") or {}).get("price")
        return Decimal(str(tick)) if tick else None

    def grid(self, account: str, symbol: str) -> AmountGrid | None:
        market = self._market(account, symbol)
        if market is None:
            return None
        step = (market.get("precision") or {}).get("amount")
        minimum = ((market.get("limits") or {}).get("amount") or {}).get("min")
        return AmountGrid(
            step=Decimal(str(step)) if step else Decimal("0.001"),
            minimum=Decimal(str(minimum)) if minimum else Decimal(0),
        )


# --- the sweep --------------------------------------------------------------------------


@dataclass
class SweepReport:
    positions: int = 0
    detected: int = 0
    phase_changes: int = 0
    closes_enqueued: list[int] = field(default_factory=list)
    by_phase: dict[str, int] = field(default_factory=dict)
    price_errors: int = 0
    market_errors: int = 0
    actions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Watched:
    view: AgedView
    base_tolerance_percent: Decimal
    price_tick: Decimal


@dataclass(frozen=True)
class _Seen:
    """A last price and when it was asked for (a price is observed no earlier)."""

    price: Decimal
    observed_at: datetime


def sweep_aged(settings: Settings, now: datetime | None = None) -> SweepReport:
    """Detect aged positions, move phases, apply the close policy, claim the closes due.

    ``report.closes_enqueued`` holds the episodes claimed for a close; the
    caller sends their close tasks.
    """
    now = now or datetime.now(UTC)
    policy = AgedPolicy.from_settings(settings.aged)
    rules = CloseRules.from_settings(settings.aged)
    markets = _Markets(settings)
    report = SweepReport()
    watch: list[_Watched] = []
    # Read, then ask for market metadata (a first read loads the markets), then write:
    # no transaction stays open across an exchange call.
    with session_scope() as session:
        rows = [
            (_PositionSnapshot.of(position), None if aged is None else view_of(aged, position))
            for position, aged in session.execute(
                select(Position, AgedPosition)
                .outerjoin(
                    AgedPosition,
                    and_(
                        AgedPosition.position_id == Position.id,
                        AgedPosition.status.in_(status_values(CURRENT)),
                    ),
                )
                .where(Position.status.in_(status_values(HELD)))
            ).all()
        ]
    report.positions = len(rows)
    aged: list[tuple[_PositionSnapshot, AgedView | None, Decimal, Decimal]] = []
    for position, episode in rows:
        if episode is not None and episode.status not in TRACKED:
            continue  # unclosable: waiting for a person, alerted once
        base = assess(policy, position.side, position.entry_price, position.opened_at, now)
        if base.phase == AgedPhase.NONE:
            continue
        tick = markets.price_tick(position.account, position.symbol)
        if tick is None:
            report.market_errors += 1
            continue
        aged.append((position, episode, base.loss_tolerance_percent, tick))
    with session_scope() as session:
        for position, episode, base_tolerance, tick in aged:
            assessment = assess(
                policy,
                position.side,
                position.entry_price,
                position.opened_at,
                now,
                extra_tolerance_percent=episode.extra_tolerance_percent if episode else Decimal(0),
                tolerance_cap_percent=settings.aged.tolerance_widen_cap_percent,
                price_tick=tick,
            )
            if episode is None:
                episode = _detect(session, position, assessment, policy, now)
                if episode is None:
                    continue  # detected by a concurrent sweep, or closed meanwhile
                report.detected += 1
            else:
                moved, updated = _update_phase(session, episode, assessment, now)
                if updated is None:
                    continue  # changed by another writer meanwhile: next sweep
                report.phase_changes += moved
                episode = updated
            report.by_phase[episode.phase] = report.by_phase.get(episode.phase, 0) + 1
            if episode.status == AgedStatus.ACTIVE and episode.target_price is not None:
                watch.append(_Watched(episode, base_tolerance, tick))
    prices = _prices(watch, report, markets)
    for watched in watch:
        view = watched.view
        grid = markets.grid(view.account, view.symbol)
        if grid is None:
            report.market_errors += 1
            continue
        action = _apply_policy(
            watched,
            prices.get((view.account, view.symbol)),
            grid,
            policy,
            rules,
            settings,
            now,
            report,
            trigger="sweep",
        )
        report.actions[action] = report.actions.get(action, 0) + 1
    return report


@dataclass(frozen=True)
class _PositionSnapshot:
    id: int
    account: str
    symbol: str
    side: str
    size: Decimal
    entry_price: Decimal
    opened_at: datetime

    @classmethod
    def of(cls, position: Position) -> _PositionSnapshot:
        return cls(
            position.id,
            position.account,
            position.symbol,
            position.side,
            position.size,
            position.entry_price,
            position.opened_at,
        )


def _detect(
    session,
    position: _PositionSnapshot,
    assessment: AgedAssessment,
    policy: AgedPolicy,
    now: datetime,
) -> AgedView | None:
    """Start the position's episode; None when another sweep started it first, or the
    position closed since it was read.

    The position row is share-locked by the insert: a fill closing it meanwhile
    waits for this episode, and ends it with the position.
    """
    config = _json_policy(policy)
    values = {
        "position_id": position.id,
        "status": AgedStatus.ACTIVE.value,
        "phase": str(assessment.phase),
        "detected_at": now,
        "phase_changed_at": now,
        "target_price": assessment.target_price,
        "loss_tolerance_percent": assessment.loss_tolerance_percent,
        "extra_tolerance_percent": Decimal(0),
        "config": config,
        "attempts": 0,
        "consecutive_failures": 0,
        "alerted_failures": 0,
    }
    still_open = (
        select(_POSITIONS.c.id)
        .where(
            _POSITIONS.c.id == position.id,
            _POSITIONS.c.status.in_(status_values(HELD)),
        )
        .with_for_update(read=True)
        .scalar_subquery()
    )
    row = session.execute(
        insert(_AGED)
        .from_select(
            list(values),
            select(*(literal(value, _AGED.c[name].type) for name, value in values.items())).where(
                still_open.is_not(None)
            ),
        )
        .on_conflict_do_nothing(
            index_elements=[_AGED.c.position_id], index_where=text(status_in_sql(CURRENT))
        )
        .returning(*_AGED.c)
    ).one_or_none()
    if row is None:
        return None
    episode = view_of(row, position)
    record_event(
        session,
        "aged_detected",
        **aged_ids(episode),
        payload={
            "phase": episode.phase,
            "target_price": str(episode.target_price),
            "age_s": round(assessment.age_s, 3),
            "config": config,
        },
    )
    return episode


def _update_phase(
    session, episode: AgedView, assessment: AgedAssessment, now: datetime
) -> tuple[int, AgedView | None]:
    """Record a new phase, tolerance or target; (phase moved, the episode now or None when
    another writer changed it first)."""
    phase = str(assessment.phase)
    target = assessment.target_price
    tolerance = assessment.loss_tolerance_percent
    values = {"target_price": target, "loss_tolerance_percent": tolerance}
    after = replace(episode, phase=phase, target_price=target, loss_tolerance_percent=tolerance)
    if episode.phase != phase:
        written = write_episode(
            session,
            episode,
            event="aged_phase_changed",
            now=now,
            payload={
                "from": episode.phase,
                "to": phase,
                "target_price": str(target),
                "loss_tolerance_percent": str(tolerance),
            },
            phase=phase,
            phase_changed_at=now,
            **values,
        )
        return (1, after) if written else (0, None)
    if episode.loss_tolerance_percent != tolerance:
        event, before, to = "aged_tolerance_changed", episode.loss_tolerance_percent, tolerance
    elif episode.target_price != target:
        # The entry moved (a fill added to the position), or the target went onto the tick grid.
        event, before, to = "aged_target_changed", episode.target_price, target
    else:
        return 0, episode
    written = write_episode(
        session,
        episode,
        event=event,
        now=now,
        payload={"from": str(before), "to": str(to), "target_price": str(target)},
        **values,
    )
    return 0, after if written else None


def _prices(
    watch: list[_Watched], report: SweepReport, markets: _Markets
) -> dict[tuple[str, str], _Seen]:
    """Last prices of the watched symbols: one fetch_tickers per exchange, not per account.

    Accounts on the same exchange and mode see the same market, so their
    symbols are asked for together through one of them.
    """
    accounts_by_venue: dict[tuple[str, str], set[str]] = {}
    symbols_by_venue: dict[tuple[str, str], set[str]] = {}
    for watched in watch:
        venue = markets.venue(watched.view.account)
        accounts_by_venue.setdefault(venue, set()).add(watched.view.account)
        symbols_by_venue.setdefault(venue, set()).add(watched.view.symbol)
    seen: dict[tuple[str, str], _Seen] = {}
    for venue, symbols in symbols_by_venue.items():
        accounts = sorted(accounts_by_venue[venue])
        observed_at = datetime.now(UTC)
        try:
            exchange = gateway.venue(markets.reader(accounts[0]))
            wanted = sorted(symbols)
            last_prices = read_with_retries(
                lambda e=exchange, w=wanted: e.last_prices(w), budget_s=1.0
            )
        except VenueError as exc:
            report.price_errors += 1
            logger.warning("aged sweep: tickers on %s failed: %s", venue[0], exc.describe())
            continue
        for symbol, price in last_prices.items():
            for account in accounts:
                seen[(account, symbol)] = _Seen(price, observed_at)
    cache_prices({key: value.price for key, value in seen.items()})
    return seen


def _apply_policy(
    watched: _Watched,
    seen: _Seen | None,
    grid: AmountGrid,
    policy: AgedPolicy,
    rules: CloseRules,
    settings: Settings,
    now: datetime,
    report: SweepReport,
    *,
    trigger: str,
) -> str:
    """Record the crossing, ask the policy, apply its decision; returns the action taken.

    ``trigger``: what brought the price (``"sweep"``, ``"stream"``), recorded with the
    crossing and the claim."""
    episode = watched.view
    price = seen.price if seen else None
    decision = next_action(
        episode_facts(episode, episode.size, watched.base_tolerance_percent),
        grid,
        price,
        now,
        rules,
    )
    reached = price is not None and target_reached(episode.side, price, episode.target_price)
    crossing = seen is not None and reached and episode.target_reached_at is None
    left = seen is not None and not reached and episode.target_reached_at is not None
    widens = decision.extra_tolerance_percent != episode.extra_tolerance_percent
    writes = crossing or left or widens or decision.alert is not None
    if not (writes or decision.sends_order or decision.action == CloseAction.GIVE_UP):
        return str(decision.action)
    with session_scope() as session:
        if crossing:
            assert seen is not None
            if not write_episode(
                session,
                episode,
                event="aged_target_reached",
                now=now,
                payload={
                    "price": str(seen.price),
                    "target_price": str(episode.target_price),
                    "observed_at": seen.observed_at.isoformat(),
                    "trigger": trigger,
                },
                target_reached_at=seen.observed_at,
                unset="target_reached_at",
            ):
                return "stale"
        elif left:
            if not write_episode(
                session,
                episode,
                event="aged_target_left",
                now=now,
                payload={"price": str(price), "target_price": str(episode.target_price)},
                target_reached_at=None,
            ):
                return "stale"
        if decision.alert == AlertKind.CLOSE_FAILING:
            _escalate(session, episode, decision)
        if widens:
            episode = _widen(session, watched, episode, decision, policy, settings, now)
        if decision.sends_order:
            if write_episode(
                session,
                episode,
                to=AgedStatus.CLOSING,
                event="aged_close_claimed",
                now=now,
                payload={
                    "action": str(decision.action),
                    "amount": str(decision.amount),
                    "price": str(price),
                    "target_price": str(episode.target_price),
                    "consecutive_failures": episode.consecutive_failures,
                    "trigger": trigger,
                },
                close_enqueued_at=now,
            ):
                report.closes_enqueued.append(episode.id)
        elif decision.action == CloseAction.GIVE_UP:
            give_up(session, episode, decision)
    return str(decision.action)


def _escalate(session, episode: AgedView, decision: CloseDecision) -> None:
    failures = episode.consecutive_failures
    if not write_episode(
        session,
        episode,
        event="aged_escalated",
        payload={"consecutive_failures": failures, "next": str(decision.action)},
        alerted_failures=failures,
    ):
        return
    raise_alert(
        session,
        AlertKind.CLOSE_FAILING.value,
        f"aged close of {episode.account} {episode.symbol} failed {failures} times in a row "
        f"(next: {decision.action}): {episode.last_error or 'no error recorded'}",
        account=episode.account,
        symbol=episode.symbol,
        position_id=episode.position_id,
        aged_id=episode.id,
        payload={"consecutive_failures": failures, "next": str(decision.action)},
    )


def _widen(
    session,
    watched: _Watched,
    episode: AgedView,
    decision: CloseDecision,
    policy: AgedPolicy,
    settings: Settings,
    now: datetime,
) -> AgedView:
    """Raise the accepted loss to the decision's; the target moves with it."""
    wider = assess(
        policy,
        episode.side,
        episode.entry_price,
        episode.opened_at,
        now,
        extra_tolerance_percent=decision.extra_tolerance_percent,
        tolerance_cap_percent=settings.aged.tolerance_widen_cap_percent,
        price_tick=watched.price_tick,
    )
    written = write_episode(
        session,
        episode,
        event="aged_tolerance_widened",
        now=now,
        payload={
            "from": str(episode.loss_tolerance_percent),
            "to": str(wider.loss_tolerance_percent),
            "extra_from": str(episode.extra_tolerance_percent),
            "extra_to": str(decision.extra_tolerance_percent),
            "target_price": str(wider.target_price),
            "consecutive_failures": episode.consecutive_failures,
        },
        extra_tolerance_percent=decision.extra_tolerance_percent,
        loss_tolerance_percent=wider.loss_tolerance_percent,
        target_price=wider.target_price,
    )
    if not written:
        return episode
    return replace(
        episode,
        extra_tolerance_percent=decision.extra_tolerance_percent,
        loss_tolerance_percent=wider.loss_tolerance_percent,
        target_price=wider.target_price,
    )


# --- prices pushed by a stream ---------------------------------------------------------------


@dataclass(frozen=True)
class AgedTarget:
    """An active episode's target, for a price stream to compare its prices with."""

    aged_id: int
    side: PositionSide
    target_price: Decimal


def _active_episodes(account: str | None = None, symbol: str | None = None) -> list[AgedView]:
    """Active episodes that have a target, of positions still held (of one account and
    symbol, when given)."""
    query = (
        select(AgedPosition, Position)
        .join(Position, Position.id == AgedPosition.position_id)
        .where(
            AgedPosition.status == AgedStatus.ACTIVE.value,
            AgedPosition.target_price.is_not(None),
            Position.status.in_(status_values(HELD)),
        )
    )
    if account is not None:
        query = query.where(Position.account == account)
    if symbol is not None:
        query = query.where(Position.symbol == symbol)
    with session_scope() as session:
        return [view_of(aged, position) for aged, position in session.execute(query).all()]


def aged_targets() -> dict[tuple[str, str], list[AgedTarget]]:
    """The targets of every active episode, by (account, symbol)."""
    targets: dict[tuple[str, str], list[AgedTarget]] = {}
    for view in _active_episodes():
        assert view.target_price is not None
        targets.setdefault((view.account, view.symbol), []).append(
            AgedTarget(view.id, view.side, view.target_price)
        )
    return targets


def close_on_pushed_price(
    account: str, symbol: str, price: Decimal, observed_at: datetime, settings: Settings
) -> list[int]:
    """Apply the sweep's close policy to ``symbol``'s active episodes on ``account`` whose
    target ``price`` reached (pushed by a stream, seen at ``observed_at``), and send
    ``close_aged_position`` for each close claimed; returns the claimed episodes' ids.

    Episodes the price did not reach are the sweep's (a price leaving the target,
    widening and giving up are decided on its interval), so a stream's burst of prices
    writes nothing until one reaches a target. Raises the store's errors.
    """
    now = datetime.now(UTC)
    reached = [
        view
        for view in _active_episodes(account, symbol)
        if target_reached(view.side, price, view.target_price)
    ]
    if not reached:
        return []
    policy = AgedPolicy.from_settings(settings.aged)
    rules = CloseRules.from_settings(settings.aged)
    markets = _Markets(settings)
    report = SweepReport()
    seen = _Seen(price, observed_at)
    for view in reached:
        tick = markets.price_tick(account, symbol)
        grid = markets.grid(account, symbol)
        if tick is None or grid is None:
            logger.warning("pushed price %s %s: no market metadata", account, symbol)
            continue
        base = assess(policy, view.side, view.entry_price, view.opened_at, now)
        watched = _Watched(view, base.loss_tolerance_percent, tick)
        _apply_policy(watched, seen, grid, policy, rules, settings, now, report, trigger="stream")
    for aged_id in report.closes_enqueued:
        app.send_task("close_aged_position", kwargs={"aged_id": aged_id})
    return report.closes_enqueued
