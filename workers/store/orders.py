"""Order rows: the intent insert and the one way to change an order's status.

Every status change runs ``transition`` in its own short transaction with the
row locked (``SELECT ... FOR UPDATE``): the move is checked against the table
in ``workers.execution.order_state`` and its event is written in the same
transaction, so a stale worker can never move an order backwards and no
change exists without its event.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    func,
    not_,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from workers.execution.order_state import (
    EVENT_FOR_STATUS,
    IN_FLIGHT,
    NOT_SENT_EVENT,
    TERMINAL,
    OrderStatus,
    path_to,
)
from workers.execution.signal import order_result
from workers.observability import metrics
from workers.observability.logs import log_event
from workers.store.db import DriverStatement, session_scope, single_statement
from workers.store.events import (
    event_row,
    insert_recorded_events,
    raise_alert,
    record_event,
    take_recorded_events,
)
from workers.store.models import Order
from workers.store.slots import note_slot_locked, slot_lock


@dataclass(frozen=True)
class OrderSnapshot:
    """A detached copy of an order row, safe to pass around outside a transaction."""

    id: int
    client_order_id: str
    signal_id: str
    leg: str
    account: str
    symbol: str
    side: str
    order_type: str
    time_in_force: str | None
    amount: Decimal
    price: Decimal | None
    reduce_only: bool
    purpose: str
    position_id: int | None
    aged_id: int | None
    status: OrderStatus
    exchange_order_id: str | None
    filled: Decimal
    average_price: Decimal | None
    attempts: int
    last_error_class: str | None
    last_error: str | None
    created_at: datetime
    acked_at: datetime | None
    submitted_at: datetime | None
    # How much of ``filled`` is already in the position book.
    booked_filled: Decimal
    task_id: str | None = None
    alerted_at: datetime | None = None
    # The amount the signal asked before it was floored to the step (None: ``amount``).
    requested_amount: Decimal | None = None

    @classmethod
    def of(cls, order: Any) -> OrderSnapshot:
        """From an ``Order`` object or an ``orders`` row."""
        return cls(
            id=order.id,
            client_order_id=order.client_order_id,
            signal_id=order.signal_id,
            leg=order.leg,
            account=order.account,
            symbol=order.symbol,
            side=order.side,
            order_type=order.order_type,
            time_in_force=order.time_in_force,
            amount=order.amount,
            price=order.price,
            reduce_only=order.reduce_only,
            purpose=order.purpose,
            position_id=order.position_id,
            aged_id=order.aged_id,
            status=OrderStatus(order.status),
            exchange_order_id=order.exchange_order_id,
            filled=order.filled,
            average_price=order.average_price,
            attempts=order.attempts,
            last_error_class=order.last_error_class,
            last_error=order.last_error,
            created_at=order.created_at,
            acked_at=order.acked_at,
            submitted_at=order.submitted_at,
            booked_filled=order.booked_filled,
            task_id=order.task_id,
            alerted_at=order.alerted_at,
            requested_amount=order.requested_amount,
        )

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def summary(self) -> dict[str, Any]:
        """The task result in the one format (``workers.execution.signal.OrderResult``)."""
        return order_result(
            exchange_order_id=self.exchange_order_id,
            client_order_id=self.client_order_id,
            status=self.status,
            requested=self.requested_amount,
            amount=self.amount,
            filled=self.filled,
            average_price=self.average_price,
            attempts=self.attempts,
            last_error=self.last_error,
            last_error_class=self.last_error_class,
        )


ORDERS = Order.__table__
_SNAPSHOT_FIELDS = frozenset(OrderSnapshot.__dataclass_fields__)


# What an order's events carry of it, beside its id.
_EVENT_ID_COLUMNS = ("position_id", "aged_id", "client_order_id", "signal_id", "account", "symbol")


def _event_ids(order: Any) -> dict[str, Any]:
    return {"order_id": order.id, **{name: getattr(order, name) for name in _EVENT_ID_COLUMNS}}


# The order hot path runs its statements through psycopg (``DriverStatement``),
# not ORM objects or Core executions: an order makes a handful of these small
# statements, and the ORM's unit of work, then Core's per-call work, cost
# several times the statements themselves.


# Built once: constructing a statement costs more than running it.
_ORDER_BY_CID = select(ORDERS).where(ORDERS.c.client_order_id == bindparam("cid"))
_ORDER_BY_CID_LOCKED = _ORDER_BY_CID.with_for_update()
_SELECT_ORDER = DriverStatement(_ORDER_BY_CID)
_SELECT_ORDER_FOR_UPDATE = DriverStatement(_ORDER_BY_CID_LOCKED)
# The row locked first (a materialized CTE runs before the outer select), then its
# book slot: the lock order every writer keeps (``workers.store.slots``).
_LOCKED_ORDER = _ORDER_BY_CID_LOCKED.cte("locked_order").prefix_with("MATERIALIZED")
_SELECT_ORDER_LOCKING_SLOT = DriverStatement(
    select(
        _LOCKED_ORDER,
        slot_lock(_LOCKED_ORDER.c.account, _LOCKED_ORDER.c.symbol).label("slot_locked"),
    )
)
# The SET clause is the keys of the parameters given.
_UPDATE_ORDER = DriverStatement(update(ORDERS).where(ORDERS.c.id == bindparam("order_id")))
_TOUCH_ORDER = update(ORDERS).where(ORDERS.c.client_order_id == bindparam("cid"))
# What a caller of ``ensure_intent`` gives (``metadata`` is ``Order.metadata_``).
_INTENT_COLUMNS = (
    "client_order_id",
    "signal_id",
    "leg",
    "account",
    "symbol",
    "side",
    "order_type",
    "time_in_force",
    "amount",
    "requested_amount",
    "price",
    "reduce_only",
    "purpose",
    "position_id",
    "aged_id",
    "metadata",
    "status",
    "submitted_at",
    "task_id",
)


def _insert_intent_statement() -> DriverStatement:
    """The intent row and its events (``:rows``) in one statement; no row when the id exists."""
    names = ", ".join(_INTENT_COLUMNS)
    placeholders = ", ".join(f":{name}" for name in _INTENT_COLUMNS)
    return DriverStatement(
        text(
            f"WITH intent AS (INSERT INTO {ORDERS.name} "  # noqa: S608 - column names only
            f"({names}, filled, booked_filled, attempts) VALUES ({placeholders}, 0, 0, 0) "
            "ON CONFLICT (client_order_id) DO NOTHING RETURNING *), "
            f"intent_events AS ({insert_recorded_events(order_id_from='intent')}) "
            "SELECT * FROM intent"
        ).bindparams(
            *(bindparam(name, type_=ORDERS.c[name].type) for name in _INTENT_COLUMNS),
        )
    )


_INSERT_INTENT = _insert_intent_statement()


def _order_row(connection: Connection, client_order_id: str, *, for_update: bool = False) -> Any:
    query = _SELECT_ORDER_FOR_UPDATE if for_update else _SELECT_ORDER
    return query.one_or_none(connection, {"cid": client_order_id})


def _update_order(session: Session, order_id: int, values: Mapping[str, Any]) -> None:
    """Write ``values`` on the row; the events recorded so far go in the same statement.

    The row update is the last write of most order transactions, so its events
    cost no INSERT round trip of their own (events recorded later are written
    at commit as usual).
    """
    rows = take_recorded_events(session)
    if rows is None:
        _UPDATE_ORDER.execute(session.connection(), {"order_id": order_id, **values})
        return
    statement = _update_with_events_statement(tuple(values))
    statement.execute(session.connection(), {"order_id": order_id, **values, "rows": rows})


@lru_cache(maxsize=64)
def _update_with_events_statement(columns: tuple[str, ...]) -> DriverStatement:
    """``UPDATE orders SET <columns>`` with the ``:rows`` events inserted in a CTE."""
    assignments = ", ".join(f"{name} = :{name}" for name in columns)
    return DriverStatement(
        text(
            f"WITH recorded_events AS ({insert_recorded_events()}) "
            f"UPDATE {ORDERS.name} SET {assignments} WHERE id = :order_id"  # noqa: S608 - column names only
        ).bindparams(*(bindparam(name, type_=ORDERS.c[name].type) for name in columns))
    )


def lock_order(session: Session, client_order_id: str, *, with_slot: bool = False) -> OrderSnapshot:
    """The order, its row locked until the session's transaction ends.

    ``with_slot``: its book slot too, in the same statement (one round trip where
    a fill is about to be booked; ``book_fill`` then does not lock it again).
    """
    if not with_slot:
        return OrderSnapshot.of(_order_row(session.connection(), client_order_id, for_update=True))
    row = _SELECT_ORDER_LOCKING_SLOT.one_or_none(session.connection(), {"cid": client_order_id})
    order = OrderSnapshot.of(row)
    note_slot_locked(session, order.account, order.symbol)
    return order


def write_order(session: Session, order_id: int, values: Mapping[str, Any]) -> None:
    """Write columns of a row the caller locked (status changes go through ``transition``).

    Nothing to write (a booking that booked nothing) writes nothing.
    """
    if values:
        _update_order(session, order_id, values)


def _changed(snapshot: OrderSnapshot, values: Mapping[str, Any]) -> OrderSnapshot:
    """The snapshot after ``values`` were written (columns the snapshot does not carry ignored)."""
    changes = {name: value for name, value in values.items() if name in _SNAPSHOT_FIELDS}
    if "status" in changes:
        changes["status"] = OrderStatus(changes["status"])
    return replace(snapshot, **changes)


def ensure_intent(
    values: Mapping[str, Any], *, submitting: bool = False
) -> tuple[OrderSnapshot, bool]:
    """Insert the intent row unless the client order id exists; returns (order, created).

    The unique client order id makes this idempotent: a redelivered or
    duplicated task finds the existing row and continues from its state.
    ``submitting`` writes a new row straight as ``submitting`` when the caller
    is about to send it. The row and its events are one statement, committed
    on its own (``_INSERT_INTENT``): it is the last write before the exchange call.
    """
    status = OrderStatus.SUBMITTING if submitting else OrderStatus.INTENT
    columns = {"task_id": None} | {
        ("metadata" if name == "metadata_" else name): value for name, value in values.items()
    }
    # Orders execq makes itself (closes, chunks, liquidations) ask for what they place.
    if columns.get("requested_amount") is None:
        columns["requested_amount"] = columns["amount"]
    ids = {name: columns.get(name) for name in _EVENT_ID_COLUMNS}
    events = [
        event_row(
            "order_intent",
            **ids,
            payload={
                "side": columns["side"],
                "amount": str(columns["amount"]),
                **(
                    {"requested": str(columns["requested_amount"])}
                    if columns["requested_amount"] != columns["amount"]
                    else {}
                ),
                "type": columns["order_type"],
                "reduce_only": columns["reduce_only"],
                "purpose": columns["purpose"],
            },
        )
    ]
    if submitting:
        events.append(
            event_row(
                EVENT_FOR_STATUS[status],
                **ids,
                attempt=0,
                payload={"from": OrderStatus.INTENT.value, "filled": "0"},
            )
        )
    with single_statement() as connection:
        inserted = _INSERT_INTENT.one_or_none(
            connection,
            {
                **columns,
                "status": status.value,
                "submitted_at": datetime.now(UTC) if submitting else None,
                "rows": json.dumps(events),
            },
        )
        if inserted is None:
            existing = _order_row(connection, values["client_order_id"])
            return OrderSnapshot.of(existing), False
    for row in events:
        log_event(row | {"order_id": inserted.id})
    if submitting:
        metrics.observe_order_status(inserted.account, status.value)
    return OrderSnapshot.of(inserted), True


def load_order(client_order_id: str) -> OrderSnapshot | None:
    with session_scope() as session:
        row = _order_row(session.connection(), client_order_id)
        return None if row is None else OrderSnapshot.of(row)


def transition(
    client_order_id: str,
    target: OrderStatus,
    *,
    payload: Mapping[str, Any] | None = None,
    accepted_attempt: bool = False,
    then: Callable[[Session, OrderSnapshot], Mapping[str, Any]] | None = None,
    **fields: Any,
) -> OrderSnapshot:
    """Move the order to ``target`` (through any required intermediate state) and
    update ``fields``; one event per status change. Raises IllegalTransition.

    ``target`` equal to the current status only updates the fields (a partial
    fill growing), with an event only when ``filled`` changed. ``then`` runs
    in the same transaction with the moved order and returns more columns to
    write on its row (the verdict and booking of a fill, for one).
    """
    now = datetime.now(UTC)
    with session_scope() as session:
        # ``then`` books fills, under the slot's lock.
        order = lock_order(session, client_order_id, with_slot=then is not None)
        current = order.status
        steps = path_to(current, target)
        values: dict[str, Any] = {}
        if accepted_attempt:
            values |= _attempt_values(
                session, order, retry_class=None, error=None, outcome="accepted", now=now
            )
        values |= fields
        values["updated_at"] = now
        if target in TERMINAL and steps:
            values["terminal_at"] = now
        if OrderStatus.SUBMITTING in steps:
            values["submitted_at"] = now
        if steps:
            values["status"] = steps[-1].value
        changed = _changed(order, values)
        for step in steps:
            metrics.observe_order_status(order.account, step.value)
            record_event(
                session,
                EVENT_FOR_STATUS.get(step, NOT_SENT_EVENT),
                **_event_ids(changed),
                attempt=changed.attempts,
                error_class=changed.last_error_class if step == OrderStatus.REJECTED else None,
                payload={
                    "from": str(current),
                    "filled": str(changed.filled),
                    **dict(payload or {}),
                },
            )
            current = step
        if not steps and changed.filled != order.filled:
            record_event(
                session,
                EVENT_FOR_STATUS[target] if target in EVENT_FOR_STATUS else "order_updated",
                **_event_ids(changed),
                payload={"filled": str(changed.filled), **dict(payload or {})},
            )
        if then is not None:
            more = then(session, changed)
            values |= more
            changed = _changed(changed, more)
        _update_order(session, order.id, values)
        return changed


def record_attempt(
    client_order_id: str,
    *,
    retry_class: str | None,
    error: str | None,
    outcome: str,
    sent: bool = True,
) -> OrderSnapshot:
    """Write one create attempt's event (class and error, or success); ``sent`` counts it
    in ``attempts`` (false for a request that provably never left)."""
    with session_scope() as session:
        order = lock_order(session, client_order_id)
        values = _attempt_values(
            session,
            order,
            retry_class=retry_class,
            error=error,
            outcome=outcome,
            now=datetime.now(UTC),
            sent=sent,
        )
        _update_order(session, order.id, values)
        return _changed(order, values)


def _attempt_values(
    session: Session,
    order: OrderSnapshot,
    *,
    retry_class: str | None,
    error: str | None,
    outcome: str,
    now: datetime,
    sent: bool = True,
) -> dict[str, Any]:
    """The row changes for one more create attempt; records its event."""
    values: dict[str, Any] = {"updated_at": now}
    if sent:
        # The latest moment a create may have reached the exchange: the visibility
        # window for concluding "absent" is measured from here.
        values |= {"attempts": order.attempts + 1, "submitted_at": now}
    metrics.observe_attempt(order.account, retry_class or "success")
    if error is not None:
        values["last_error_class"] = retry_class
        values["last_error"] = error[:1000]
    record_event(
        session,
        "order_attempt",
        **_event_ids(order),
        attempt=values.get("attempts", order.attempts),
        error_class=retry_class,
        payload={"outcome": outcome, "error": error, "sent": sent},
    )
    return values


def raise_order_alert(
    client_order_id: str,
    kind: str,
    message: str,
    *,
    payload: Mapping[str, Any] | None = None,
    mark_alerted: bool = False,
) -> OrderSnapshot:
    """A critical alert about one order; ``mark_alerted`` records on the row that the
    alert for its unknown outcome was raised (so it is raised once)."""
    now = datetime.now(UTC)
    with session_scope() as session:
        order = lock_order(session, client_order_id)
        raise_alert(
            session,
            kind,
            message,
            account=order.account,
            symbol=order.symbol,
            order_id=order.id,
            position_id=order.position_id,
            payload={"client_order_id": order.client_order_id, **dict(payload or {})},
        )
        if not mark_alerted:
            return order
        values = {"alerted_at": now, "updated_at": now}
        _update_order(session, order.id, values)
        return _changed(order, values)


def record_order_event(
    client_order_id: str, event_type: str, payload: Mapping[str, Any] | None = None
) -> None:
    with session_scope() as session:
        order = _order_row(session.connection(), client_order_id)
        record_event(session, event_type, **_event_ids(order), payload=payload)


def touch(client_order_id: str) -> None:
    """Mark the order as being worked on (a heartbeat for the recovery sweep)."""
    with session_scope() as session:
        session.connection().execute(
            _TOUCH_ORDER, {"cid": client_order_id, "updated_at": datetime.now(UTC)}
        )


def being_worked_on() -> ColumnElement[bool]:
    """Orders a run or the tracker is still working toward an outcome: in flight, except
    the ones whose create stayed unknown past the visibility window (alerted). Those are
    only looked for; an aged close or a reconciliation goes on without waiting for them."""
    given_up_waiting = and_(
        Order.status == OrderStatus.UNKNOWN.value, Order.alerted_at.is_not(None)
    )
    return and_(Order.status.in_([status.value for status in IN_FLIGHT]), not_(given_up_waiting))


def unsettled_orders(
    account: str,
    symbol: str,
    *,
    besides: str | None = None,
    changed_since: datetime | None = None,
) -> int:
    """Orders on this symbol still in flight, or filled but not yet booked.

    While any exist the book may lag the exchange by their fills, so neither a
    size difference nor a residual after a close means anything yet. With
    ``changed_since``, orders changed since then count too: the exchange's
    positions read may not show their fills yet (positions lag).
    """
    in_flight = [status.value for status in IN_FLIGHT]
    unsettled = [Order.status.in_(in_flight), Order.filled > Order.booked_filled]
    if changed_since is not None:
        unsettled.append(Order.updated_at >= changed_since)
    with session_scope() as session:
        query = (
            select(func.count())
            .select_from(Order)
            .where(Order.account == account, Order.symbol == symbol, or_(*unsettled))
        )
        if besides is not None:
            query = query.where(Order.client_order_id != besides)
        return session.scalar(query) or 0


def unfinished_orders(account: str, symbol: str | None = None) -> list[OrderSnapshot]:
    """The account's orders that are not terminal (of ``symbol`` only, when given)."""
    with session_scope() as session:
        query = select(Order).where(
            Order.account == account, Order.status.in_([status.value for status in IN_FLIGHT])
        )
        if symbol is not None:
            query = query.where(Order.symbol == symbol)
        return [OrderSnapshot.of(row) for row in session.scalars(query.order_by(Order.id))]
