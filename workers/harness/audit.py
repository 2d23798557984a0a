"""Audit from the sources of truth: Postgres and the simulator's ledger and positions.

Used by the demo's summary, ``execq chaos`` and the tests. Nothing here is
counted in memory during a run: every figure is read back after it.

- ``duplicates``: orders the exchange accepted beyond one per client order
  id (the client id is derived from signal and leg, so this is also "two
  orders for one leg");
- ``lost``: signals that were sent but have no terminal order and no
  ``signal_rejected`` event (the outbox giving up on a signal that never
  reached a worker, ``field`` = delivery, counts as lost);
- ``orphans``: positions on the exchange the book does not know (or with a
  different size), plus open book positions the exchange does not have;
- ``stuck``: orders still in flight, and aged positions whose close was due
  but did not happen;
- ``fills_by_source`` (a detail, not a defect): how each filled order's fill reached
  execq, from the ``source`` of the event of its final status: ``stream`` (pushed
  by an exchange stream), ``create`` (the create's own answer), or a poll
  (``create+follow``, ``lookup``, ``tracking``, ``verification``, ``cancel``);
- ``missing_events``: committed state without its event. An order's status
  and its event are written in one transaction, so every order has its
  ``order_intent`` event and the event of its current status
  (``EVENT_FOR_STATUS``), and every order with a booked fill has a position
  event; one missing means a state change was committed without its record
  (or an event was lost, e.g. across a PostgreSQL restart).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import case, exists, func, literal, select, union_all
from sqlalchemy.orm import Session

from workers.exchange.venues import VENUES
from workers.execution.order_state import EVENT_FOR_STATUS, IN_FLIGHT, TERMINAL
from workers.harness.sim_client import SimulatorClient
from workers.settings import Settings
from workers.store.db import session_scope
from workers.store.models import AgedPosition, Alert, Event, Order, Position

# What booking a fill records (workers/store/positions.py, ``book_fill``).
BOOKING_EVENTS = ("position_opened", "position_increased", "position_reduced", "position_closed")


@dataclass
class AuditReport:
    signals: int = 0
    terminal: int = 0
    duplicates: int = 0
    lost: int = 0
    orphans: int = 0
    stuck: int = 0
    missing_events: int = 0
    orders: int = 0
    ledger_orders: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (
            self.duplicates or self.lost or self.orphans or self.stuck or self.missing_events
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ledger_duplicates(ledger: Iterable[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """(exchange, clientOrderId) -> number of accepted orders, for those accepted more than once."""
    counts = Counter((row["exchange"], row["clientOrderId"]) for row in ledger)
    return {key: count for key, count in counts.items() if count > 1}


def missing_events(session: Session) -> list[tuple[str, str]]:
    """(client order id, event type) for every committed order state without its event.

    Checked per order: ``order_intent``; the event of its current status
    (``intent`` has none of its own); a booking event when ``booked_filled > 0``.
    """

    def lacking(label: Any, event_matches: Any, *where: Any) -> Any:
        has_event = exists().where(Event.order_id == Order.id, event_matches)
        return select(Order.client_order_id, label).where(~has_event, *where)

    status_event = case(
        {status.value: event for status, event in EVENT_FOR_STATUS.items()}, value=Order.status
    )
    rows = session.execute(
        union_all(
            lacking(literal("order_intent"), Event.type == "order_intent"),
            lacking(
                status_event,
                Event.type == status_event,
                Order.status.in_([status.value for status in EVENT_FOR_STATUS]),
            ),
            lacking(
                literal("position booking"),
                Event.type.in_(BOOKING_EVENTS),
                Order.booked_filled > 0,
            ),
        )
    ).all()
    return sorted((str(client_id), str(kind)) for client_id, kind in rows)


# The ``source`` of a fill that reached execq by neither a stream nor the create's answer.
STREAM_SOURCE = "stream"
CREATE_SOURCE = "create"


def fills_by_source(session: Session) -> dict[str, int]:
    """Orders with a fill, by the ``source`` of the event of their current status
    (``none`` when that event names none)."""
    status_event = case(
        {status.value: event for status, event in EVENT_FOR_STATUS.items()}, value=Order.status
    )
    source = func.coalesce(Event.payload["source"].astext, "none")
    rows = session.execute(
        select(source, func.count(func.distinct(Order.id)))
        .join(Event, Event.order_id == Order.id)
        .where(Order.filled > 0, Event.type == status_event)
        .group_by(source)
    ).all()
    return {str(name): int(count) for name, count in rows}


def fills_by_channel(by_source: dict[str, int]) -> dict[str, int]:
    """``fills_by_source`` as stream, create answer and poll (every other source)."""
    stream = by_source.get(STREAM_SOURCE, 0)
    create = by_source.get(CREATE_SOURCE, 0)
    return {"stream": stream, "create": create, "poll": sum(by_source.values()) - stream - create}


def audit(
    settings: Settings,
    sim_url: str,
    signal_ids: Iterable[str] | None = None,
    *,
    aged_due_grace_s: float = 30.0,
) -> AuditReport:
    sim = SimulatorClient(sim_url, timeout_s=60)
    try:
        ledger = sim.ledger()
        sim_positions = sim.positions()
    finally:
        sim.close()
    report = AuditReport(ledger_orders=len(ledger))

    duplicates = ledger_duplicates(ledger)
    report.duplicates = sum(count - 1 for count in duplicates.values())
    report.details["duplicate_client_ids"] = [f"{ex}:{cid}" for ex, cid in duplicates]

    terminal_values = [status.value for status in TERMINAL]
    in_flight_values = [status.value for status in IN_FLIGHT]
    with session_scope() as session:
        report.orders = session.scalar(select(func.count()).select_from(Order)) or 0
        by_signal = dict(
            session.execute(
                select(
                    Order.signal_id,
                    func.bool_and(Order.status.in_(terminal_values)),
                ).group_by(Order.signal_id)
            ).all()
        )
        # A signal the outbox gave up on (``field`` delivery) never reached a worker: lost.
        rejected_signals = set(
            session.scalars(
                select(Event.signal_id)
                .where(
                    Event.type == "signal_rejected",
                    Event.payload["field"].astext.is_distinct_from("delivery"),
                )
                .distinct()
            )
        )
        redelivered = list(
            session.scalars(select(Event.signal_id).where(Event.type == "signal_redelivered"))
        )
        in_flight = session.scalars(
            select(Order.client_order_id).where(Order.status.in_(in_flight_values))
        ).all()
        due_before = datetime.now(UTC) - timedelta(seconds=aged_due_grace_s)
        stuck_aged = session.scalars(
            select(AgedPosition.id).where(
                AgedPosition.status.in_(("active", "closing")),
                AgedPosition.target_reached_at.is_not(None),
                AgedPosition.target_reached_at < due_before,
            )
        ).all()
        book = session.execute(
            select(Position.account, Position.symbol, Position.side, Position.size).where(
                Position.status == "open"
            )
        ).all()
        report.details["alerts"] = session.scalar(select(func.count()).select_from(Alert)) or 0
        unrecorded = missing_events(session)
        report.details["fills_by_source"] = fills_by_source(session)
    report.missing_events = len(unrecorded)
    report.details["missing_events"] = [f"{cid}: {kind}" for cid, kind in unrecorded[:50]]

    expected = set(signal_ids) if signal_ids is not None else set(by_signal) | rejected_signals
    report.signals = len(expected)
    report.terminal = sum(1 for signal in expected if by_signal.get(signal) is True)
    lost = [
        signal
        for signal in expected
        if by_signal.get(signal) is not True and signal not in rejected_signals
    ]
    report.lost = len(lost)
    report.details["lost_signals"] = sorted(lost)[:50]
    report.details["rejected_signals"] = len(expected & rejected_signals)
    # Sends by the outbox of signals the broker lost (not a defect: the repair of one).
    report.details["redelivered_signals"] = sum(1 for signal in redelivered if signal in expected)

    report.stuck = len(in_flight) + len(stuck_aged)
    report.details["in_flight_orders"] = list(in_flight)[:50]
    report.details["stuck_aged"] = list(stuck_aged)[:50]

    account_of_exchange = {
        VENUES[account.ccxt_class].exchange: account.name for account in settings.accounts
    }
    on_exchange = {
        (account_of_exchange.get(row["exchange"], row["exchange"]), row["symbol"]): Decimal(
            row["size"]
        )
        for row in sim_positions
        if Decimal(row["size"]) != 0
    }
    in_book = {
        (account, symbol): size if side == "long" else -size for account, symbol, side, size in book
    }
    mismatched = sorted(
        f"{account} {symbol}: exchange {on_exchange.get((account, symbol), 0)} "
        f"book {in_book.get((account, symbol), 0)}"
        for account, symbol in set(on_exchange) | set(in_book)
        if on_exchange.get((account, symbol), Decimal(0))
        != in_book.get((account, symbol), Decimal(0))
    )
    report.orphans = len(mismatched)
    report.details["position_mismatches"] = mismatched[:50]
    return report
