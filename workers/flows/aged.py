"""Aged positions: the phase sweep and the close, wired to I/O.

The rules are pure functions: phase, target and close record in
``workers.execution.aged``, the policy after failed closes in
``workers.execution.aged_close``, chunk plans in ``workers.execution.chunks``,
the episode's lifecycle in ``workers.execution.aged_state``. This module
loads state, calls them, talks to the exchange through the same exactly-once
submission path as every other order, and records each step through the
store's guarded writes. Nothing lives only in memory: a restarted worker
picks every episode up again from Postgres on the next sweep.

The sweep decides, the close task executes: the sweep records the first
price it sees at or past a target (close latency is measured from there),
applies the policy's widening and alerts, and claims the episodes whose
close is due (``active -> closing``); the close task re-reads the position
on the exchange and sends the whole close or the chunks. A close that does
not close the position is a failure, and the episode is ``active`` again,
waiting out its backoff.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, literal, select, text
from sqlalchemy.dialects.postgresql import insert

from workers import redis_keys
from workers.coordination import LockNotAcquired, held_lock
from workers.exchange import gateway
from workers.exchange.positions import fetch_positions
from workers.exchange.prices import amount_limits, cache_prices, find_market
from workers.exchange.reads import EXCHANGE_ERRORS, read_with_retries
from workers.execution.aged import (
    AgedAssessment,
    AgedPhase,
    AgedPolicy,
    assess,
    book_differs,
    target_reached,
)
from workers.execution.aged_close import (
    CLOSES,
    AlertKind,
    AmountGrid,
    CloseAction,
    CloseDecision,
    CloseRules,
    EpisodeFacts,
    backoff_s,
    next_action,
)
from workers.execution.aged_state import CURRENT, TRACKED, AgedStatus
from workers.execution.client_ids import client_order_id
from workers.execution.order_state import IN_FLIGHT, OrderStatus
from workers.execution.position_state import HELD, status_in_sql, status_values
from workers.flows.submission import Requeue, Submission, describe_error
from workers.flows.verification import check_flat, verify_and_book
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.aged import AgedView, aged_ids, load_aged, lock_aged, view_of, write_episode
from workers.store.db import session_scope
from workers.store.events import raise_alert, record_event
from workers.store.models import AgedPosition, Order, Position
from workers.store.orders import OrderSnapshot
from workers.store.positions import close_position, correct_position, lock_open_position

logger = logging.getLogger("execq.aged")

_AGED = AgedPosition.__table__
_POSITIONS = Position.__table__


def _json_policy(policy: AgedPolicy) -> dict[str, str]:
    return {name: str(value) for name, value in vars(policy).items()}


def _base_tolerance(policy: AgedPolicy, view: AgedView, now: datetime) -> Decimal:
    """The phase schedule's accepted loss now, before any widening."""
    return assess(policy, view.side, view.entry_price, view.opened_at, now).loss_tolerance_percent


def _facts(
    view: AgedView, size: Decimal, base_tolerance: Decimal, chunks_closed: int = 0
) -> EpisodeFacts:
    return EpisodeFacts(
        side=view.side,
        size=abs(size),
        target_price=view.target_price,
        failures=view.consecutive_failures,
        last_attempt_at=view.last_attempt_at,
        base_tolerance_percent=base_tolerance,
        extra_tolerance_percent=view.extra_tolerance_percent,
        alerted_failures=view.alerted_failures,
        chunks_closed=chunks_closed,
    )


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
            except EXCHANGE_ERRORS as exc:
                self._unreachable.add(venue)
                logger.warning("aged sweep: markets of %s: %s", account, describe_error(exc))
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


def _grid(account: str, symbol: str) -> AmountGrid:
    limits = amount_limits(account, symbol)
    return AmountGrid(step=limits.step, minimum=limits.minimum)


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
            client = gateway.get_client(markets.reader(accounts[0]))
            wanted = sorted(symbols)
            tickers = read_with_retries(lambda c=client, w=wanted: c.fetch_tickers(w), budget_s=1.0)
        except EXCHANGE_ERRORS as exc:
            report.price_errors += 1
            logger.warning("aged sweep: tickers on %s failed: %s", venue[0], describe_error(exc))
            continue
        for symbol, ticker in tickers.items():
            last = ticker.get("last") or ticker.get("close")
            if last is None or symbol not in symbols:
                continue
            for account in accounts:
                seen[(account, symbol)] = _Seen(Decimal(str(last)), observed_at)
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
) -> str:
    """Record the crossing, ask the policy, apply its decision; returns the action taken."""
    episode = watched.view
    price = seen.price if seen else None
    decision = next_action(
        _facts(episode, episode.size, watched.base_tolerance_percent),
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
                },
                target_reached_at=seen.observed_at,
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
                },
                close_enqueued_at=now,
            ):
                report.closes_enqueued.append(episode.id)
        elif decision.action == CloseAction.GIVE_UP:
            _give_up(session, episode, decision)
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


def _give_up(session, episode: AgedView, decision: CloseDecision) -> None:
    """The policy gave up, or no order can close the position: stop and tell a person."""
    if not write_episode(
        session,
        episode,
        to=AgedStatus.UNCLOSABLE,
        event="aged_gave_up",
        payload={"reason": decision.reason, "consecutive_failures": episode.consecutive_failures},
        last_error=decision.reason,
    ):
        return
    raise_alert(
        session,
        AlertKind.UNCLOSABLE.value,
        f"{episode.account} {episode.symbol}: aged position of {episode.size} cannot be closed "
        f"by execq ({decision.reason}); close it by hand",
        account=episode.account,
        symbol=episode.symbol,
        position_id=episode.position_id,
        aged_id=episode.id,
        payload={"reason": decision.reason},
    )


# --- the close --------------------------------------------------------------------------


def _in_flight_close(aged_id: int) -> OrderSnapshot | None:
    with session_scope() as session:
        order = session.scalars(
            select(Order)
            .where(Order.aged_id == aged_id, Order.status.in_(status_values(IN_FLIGHT)))
            .order_by(Order.id.desc())
            .limit(1)
        ).one_or_none()
        return None if order is None else OrderSnapshot.of(order)


def _close_orders_count(aged_id: int) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(Order.aged_id == aged_id)) or 0


def _exchange_size(account: str, symbol: str) -> Decimal:
    positions = fetch_positions(account, [symbol])
    return sum((p.size for p in positions if p.symbol == symbol), Decimal(0))


def _close_intent(
    view: AgedView, *, signal_id: str, leg: str, amount: Decimal, purpose: str
) -> OrderSnapshot:
    cid = client_order_id(signal_id, leg)
    order, _ = order_store.ensure_intent(
        {
            "client_order_id": cid,
            "signal_id": signal_id,
            "leg": leg,
            "account": view.account,
            "symbol": view.symbol,
            "side": "sell" if view.side == "long" else "buy",
            "order_type": "market",
            "time_in_force": None,
            "amount": amount,
            "price": None,
            "reduce_only": True,
            "purpose": purpose,
            "position_id": view.position_id,
            "aged_id": view.id,
            "metadata_": {},
        }
    )
    return order


def _summary(view: AgedView | None, aged_id: int, **extra: Any) -> dict[str, Any]:
    return {"aged_id": aged_id, "status": None if view is None else str(view.status), **extra}


def close_aged(aged_id: int, settings: Settings) -> dict[str, Any]:
    """Close one aged position under its position lock. Raises Requeue to come back later."""
    view = load_aged(aged_id)
    if view is None or view.status not in TRACKED:
        return _summary(view, aged_id)
    lock_key = redis_keys.position_lock(view.account, view.symbol)
    try:
        with held_lock(lock_key, settings.position_lock_ttl_s):
            return _close_locked(aged_id, settings)
    except LockNotAcquired:
        raise Requeue(1.0, f"position lock busy: {lock_key}") from None


def _close_locked(aged_id: int, settings: Settings) -> dict[str, Any]:
    deadline = time.monotonic() + settings.run_budget_s
    view = load_aged(aged_id)  # again, now that the lock is held
    if view is None or view.status not in TRACKED:
        return _summary(view, aged_id)
    order = _in_flight_close(view.id)
    if order is not None:
        order = Submission(order=order, settings=settings, deadline=deadline).run()
        return _settle_close(view, order, settings)
    if view.status != AgedStatus.CLOSING:
        return _summary(view, aged_id)  # only a claimed episode is closed
    size = _exchange_size(view.account, view.symbol)
    if size == 0:
        if order_store.unsettled_orders(view.account, view.symbol):
            raise Requeue(2.0, "flat on the exchange with orders on the symbol unsettled")
        return _record_closed_externally(view)
    if book_differs(view.side, view.size, size):
        # The difference is probably fills not booked yet, or booked but not yet
        # in the exchange's lagging positions read: correcting the book now would
        # count them twice, or close the wrong size. The recovery sweep's rule.
        recent = datetime.now(UTC) - timedelta(seconds=settings.recovery_stuck_after_s)
        if order_store.unsettled_orders(view.account, view.symbol, changed_since=recent):
            raise Requeue(2.0, "orders on the symbol still unsettled")
        view = _correct_size(view, size)
    now = datetime.now(UTC)
    policy = AgedPolicy.from_settings(settings.aged)
    rules = CloseRules.from_settings(settings.aged)
    grid = _grid(view.account, view.symbol)
    # The claim proved the target reached: the close task decides how to close, not whether.
    decision = next_action(
        _facts(view, size, _base_tolerance(policy, view, now)),
        grid,
        view.target_price,
        now,
        rules,
    )
    if decision.action == CloseAction.GIVE_UP:
        with session_scope() as session:
            episode = lock_aged(session, view.id)
            if episode.status in TRACKED:
                _give_up(session, episode, decision)
        return _summary(load_aged(view.id), aged_id, reason=decision.reason)
    if decision.action == CloseAction.CLOSE_CHUNK:
        return _close_in_chunks(view, decision, grid, rules, policy, settings, deadline)
    if decision.action == CloseAction.CLOSE_WHOLE:
        attempt = _close_orders_count(view.id) + 1
        assert decision.amount is not None
        order = _close_intent(
            view,
            signal_id=f"aged-{view.id}",
            leg=f"close{attempt}",
            amount=decision.amount,
            purpose="aged_close",
        )
        order = Submission(order=order, settings=settings, deadline=deadline).run()
        return _settle_close(view, order, settings)
    return _release(view, decision)


def _verify(order: OrderSnapshot, settings: Settings) -> None:
    """Verify and book a close's fill (every filled order is verified). Booking the fill
    that takes the position to zero ends the episode ``closed``, with its record."""
    if order.filled > 0:
        verify_and_book(order.client_order_id, settings, order=order)


def _settle_close(
    view: AgedView, order: OrderSnapshot, settings: Settings, *, verified: bool = False
) -> dict[str, Any]:
    """After a close order ended: closed (then check flat), or one more failure."""
    if not verified:
        _verify(order, settings)
    current = load_aged(view.id)
    assert current is not None
    if current.status == AgedStatus.CLOSED:
        flat = check_flat(
            view.account,
            view.symbol,
            settings,
            position_id=view.position_id,
            context=f"aged close {order.client_order_id}",
        )
        return _summary(
            current,
            view.id,
            reason=current.close_reason,
            close_price=str(current.close_price),
            attempts=current.attempts,
            flat=flat.flat,
        )
    error = order.last_error or (
        f"close order ended {order.status} with {order.filled} filled"
        if order.status != OrderStatus.FILLED
        else "close order filled; the position is still open"
    )
    return _record_failure(view, settings, order, error)


def _record_failure(
    view: AgedView, settings: Settings, order: OrderSnapshot | None, error: str
) -> dict[str, Any]:
    now = datetime.now(UTC)
    rules = CloseRules.from_settings(settings.aged)
    order_ids = {
        "order_id": order.id if order else None,
        "client_order_id": order.client_order_id if order else None,
        "error_class": order.last_error_class if order else None,
    }
    with session_scope() as session:
        episode = lock_aged(session, view.id)
        if episode.status not in TRACKED:
            # The episode ended while this close was in flight (another order closed
            # its position): the failed close changes nothing any more.
            record_event(
                session,
                "aged_close_failed",
                **aged_ids(episode),
                **order_ids,
                payload={"error": error, "episode_already": str(episode.status)},
            )
            return _summary(episode, view.id, error=error)
        failures = episode.consecutive_failures + 1
        write_episode(
            session,
            episode,
            to=AgedStatus.ACTIVE if episode.status == AgedStatus.CLOSING else None,
            event="aged_close_failed",
            now=now,
            attempt=episode.attempts + 1,
            **order_ids,
            payload={
                "error": error,
                "consecutive_failures": failures,
                "next_close_in_s": backoff_s(failures, rules),
            },
            attempts=episode.attempts + 1,
            consecutive_failures=failures,
            last_error=error,
            last_attempt_at=now,
        )
    return {
        "aged_id": view.id,
        "status": str(AgedStatus.ACTIVE),
        "error": error,
        "consecutive_failures": failures,
    }


def _release(view: AgedView, decision: CloseDecision) -> dict[str, Any]:
    """A claimed close that is not due after all (the size read says otherwise)."""
    with session_scope() as session:
        episode = lock_aged(session, view.id)
        if episode.status == AgedStatus.CLOSING:
            write_episode(
                session,
                episode,
                to=AgedStatus.ACTIVE,
                event="aged_close_released",
                payload={"action": str(decision.action), "reason": decision.reason},
            )
    return _summary(load_aged(view.id), view.id, action=str(decision.action))


def _record_closed_externally(view: AgedView) -> dict[str, Any]:
    """Flat on the exchange with nothing of ours unsettled: someone else closed it."""
    now = datetime.now(UTC)
    with session_scope() as session:
        position = lock_open_position(session, view.account, view.symbol)
        if position is not None and position.id == view.position_id:
            close_position(
                session,
                position.id,
                view.account,
                view.symbol,
                reason="closed_externally",
                realized_pnl=position.realized_pnl,
                now=now,
                order=None,
            )
    return _summary(load_aged(view.id), view.id)


def _correct_size(view: AgedView, exchange_size: Decimal) -> AgedView:
    with session_scope() as session:
        episode = lock_aged(session, view.id)
        record_event(
            session,
            "position_size_changed",
            **aged_ids(episode),
            payload={"book_size": str(episode.size), "exchange_size": str(exchange_size)},
        )
        correct_position(
            session,
            episode.position_id,
            size=exchange_size,
            entry_price=None,
            now=datetime.now(UTC),
        )
    refreshed = load_aged(view.id)
    assert refreshed is not None
    return refreshed


# --- the partial-chunk fallback -----------------------------------------------------------


def _close_in_chunks(
    view: AgedView,
    decision: CloseDecision,
    grid: AmountGrid,
    rules: CloseRules,
    policy: AgedPolicy,
    settings: Settings,
    deadline: float,
) -> dict[str, Any]:
    """Close chunk by chunk, re-reading the position between chunks; the policy plans
    each next chunk from what is really left. A chunk that does not fill ends the
    round as one failure."""
    signal_id = f"aged-{view.id}-r{view.attempts}"
    chunks_closed = 0
    while True:
        assert decision.amount is not None
        order = _close_intent(
            view,
            signal_id=signal_id,
            leg=f"chunk{chunks_closed + 1}",
            amount=decision.amount,
            purpose="aged_chunk",
        )
        order = Submission(order=order, settings=settings, deadline=deadline).run()
        _verify(order, settings)
        order_store.record_order_event(
            order.client_order_id,
            "partial_close",
            {
                "chunk": chunks_closed + 1,
                "amount": str(decision.amount),
                "filled": str(order.filled),
                "status": str(order.status),
            },
        )
        current = load_aged(view.id)
        assert current is not None
        if order.status != OrderStatus.FILLED or current.status not in TRACKED:
            return _settle_close(view, order, settings, verified=True)
        chunks_closed += 1
        remaining = abs(_exchange_size(view.account, view.symbol))
        if remaining == 0 or chunks_closed > rules.chunk_count:
            return _settle_close(view, order, settings, verified=True)
        now = datetime.now(UTC)
        decision = next_action(
            _facts(current, remaining, _base_tolerance(policy, current, now), chunks_closed),
            grid,
            current.target_price,
            now,
            rules,
        )
        if decision.action not in CLOSES:
            return _record_failure(
                view,
                settings,
                order,
                f"{remaining} left after {chunks_closed} chunks: {decision.reason}",
            )
