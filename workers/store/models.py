"""The durable record. Amounts and prices are NUMERIC, times timestamptz.

Meanings (ARCHITECTURE.md "Postgres"): ``orders`` follows the lifecycle table
in ``workers.execution.order_state``; ``positions`` is the local view of the
exchange's positions (``workers.execution.position_state``); ``aged_positions``
tracks one aged episode of a position (``workers.execution.aged_state``);
``events`` is append-only; ``alerts`` are what a person must see; ``signals`` is
the producers' outbox (``workers.producer``); ``kill_switch`` is the durable
state of the kill switch (``workers.coordination``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from workers.execution import aged_state, position_state
from workers.execution.position_state import status_in_sql

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Amount = Numeric(36, 18)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    client_order_id: Mapped[str] = mapped_column(String(36), nullable=False, unique=True)
    signal_id: Mapped[str] = mapped_column(String(256), nullable=False)
    leg: Mapped[str] = mapped_column(String(32), nullable=False)
    account: Mapped[str] = mapped_column(String(32), nullable=False)
    symbol: Mapped[str] = mapped_column(String(64), nullable=False)
    side: Mapped[str] = mapped_column(String(4), nullable=False)
    order_type: Mapped[str] = mapped_column(String(16), nullable=False)
    time_in_force: Mapped[str | None] = mapped_column(String(8))
    amount: Mapped[Decimal] = mapped_column(Amount, nullable=False)
    # The amount as the signal asked, before it was floored to the market's step
    # (unconstrained: a producer may send more decimals than the columns keep).
    requested_amount: Mapped[Decimal | None] = mapped_column(Numeric)
    price: Mapped[Decimal | None] = mapped_column(Amount)
    reduce_only: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    purpose: Mapped[str] = mapped_column(String(32), nullable=False)
    position_id: Mapped[int | None] = mapped_column(ForeignKey("positions.id"))
    aged_id: Mapped[int | None] = mapped_column(ForeignKey("aged_positions.id"))
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    exchange_order_id: Mapped[str | None] = mapped_column(String(64))
    filled: Mapped[Decimal] = mapped_column(Amount, nullable=False, default=Decimal(0))
    # How much of ``filled`` is already in the position book: booking the
    # difference makes booking idempotent under redelivery.
    booked_filled: Mapped[Decimal] = mapped_column(Amount, nullable=False, default=Decimal(0))
    verification: Mapped[str | None] = mapped_column(String(16))
    average_price: Mapped[Decimal | None] = mapped_column(Amount)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error_class: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, default=dict
    )
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    terminal_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The Celery task that placed it: a tracker stores the final result under its id.
    task_id: Mapped[str | None] = mapped_column(String(255))
    # When the critical alert for a create whose outcome stays unknown was raised.
    alerted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_orders_signal_id", "signal_id"),
        Index("ix_orders_account_symbol", "account", "symbol"),
        # The recovery sweep scans only orders that are not finished.
        Index(
            "ix_orders_in_flight",
            "status",
            "updated_at",
            postgresql_where=text(
                "status IN ('intent', 'submitting', 'unknown', 'open', 'partially_filled')"
            ),
        ),
        Index("ix_orders_created_at", "created_at"),
        # The recovery sweep books fills that a lost verify task did not.
        Index(
            "ix_orders_unbooked",
            "updated_at",
            postgresql_where=text("filled > booked_filled"),
        ),
    )


class Position(Base):
    __tablename__ = "positions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account: Mapped[str] = mapped_column(String(32), nullable=False)
    symbol: Mapped[str] = mapped_column(String(64), nullable=False)
    side: Mapped[str] = mapped_column(String(5), nullable=False)  # long | short
    size: Mapped[Decimal] = mapped_column(Amount, nullable=False)
    entry_price: Mapped[Decimal] = mapped_column(Amount, nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    verification: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    close_reason: Mapped[str | None] = mapped_column(String(32))
    realized_pnl: Mapped[Decimal] = mapped_column(Amount, nullable=False, default=Decimal(0))
    last_price: Mapped[Decimal | None] = mapped_column(Amount)
    unrealized_pnl: Mapped[Decimal | None] = mapped_column(Amount)
    opening_order_id: Mapped[int | None] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()

    __mapper_args__ = {"version_id_col": version}
    __table_args__ = (
        # One-way mode: at most one open position per account and symbol.
        Index(
            "uq_positions_open_account_symbol",
            "account",
            "symbol",
            unique=True,
            postgresql_where=text(status_in_sql(position_state.HELD)),
        ),
        Index("ix_positions_status_opened_at", "status", "opened_at"),
    )


class AgedPosition(Base):
    __tablename__ = "aged_positions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    position_id: Mapped[int] = mapped_column(ForeignKey("positions.id"), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    phase: Mapped[str] = mapped_column(String(16), nullable=False)
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    phase_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    target_price: Mapped[Decimal | None] = mapped_column(Amount)
    loss_tolerance_percent: Mapped[Decimal] = mapped_column(
        Numeric(9, 4), nullable=False, default=Decimal(0)
    )
    extra_tolerance_percent: Mapped[Decimal] = mapped_column(
        Numeric(9, 4), nullable=False, default=Decimal(0)
    )
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    consecutive_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # When the last failed close attempt ended: the next waits out its backoff from here.
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # consecutive_failures when aged_close_failing was last raised (0: never).
    alerted_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # The first time a price at or past the target was observed (by a sweep's
    # ticker read, or a pushed price): close latency is measured from here.
    target_reached_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    close_enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    close_order_id: Mapped[int | None] = mapped_column(BigInteger)
    close_price: Mapped[Decimal | None] = mapped_column(Amount)
    close_pnl: Mapped[Decimal | None] = mapped_column(Amount)
    close_pnl_percent: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))
    close_reason: Mapped[str | None] = mapped_column(String(32))
    close_duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()

    __table_args__ = (
        Index(
            "uq_aged_positions_active_position",
            "position_id",
            unique=True,
            postgresql_where=text(status_in_sql(aged_state.CURRENT)),
        ),
        Index("ix_aged_positions_status", "status"),
        Index("ix_aged_positions_closed_at", "closed_at"),
    )


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    type: Mapped[str] = mapped_column(String(48), nullable=False)
    occurred_at: Mapped[datetime] = _now_column()
    order_id: Mapped[int | None] = mapped_column(BigInteger)
    position_id: Mapped[int | None] = mapped_column(BigInteger)
    aged_id: Mapped[int | None] = mapped_column(BigInteger)
    client_order_id: Mapped[str | None] = mapped_column(String(36))
    signal_id: Mapped[str | None] = mapped_column(String(256))
    account: Mapped[str | None] = mapped_column(String(32))
    symbol: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int | None] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)

    __table_args__ = (
        Index("ix_events_type_occurred_at", "type", "occurred_at"),
        Index("ix_events_occurred_at", "occurred_at"),
        Index("ix_events_order_id", "order_id"),
        Index("ix_events_position_id", "position_id"),
        Index("ix_events_aged_id", "aged_id"),
        Index("ix_events_signal_id", "signal_id"),
    )


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    kind: Mapped[str] = mapped_column(String(48), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    occurred_at: Mapped[datetime] = _now_column()
    account: Mapped[str | None] = mapped_column(String(32))
    symbol: Mapped[str | None] = mapped_column(String(64))
    order_id: Mapped[int | None] = mapped_column(BigInteger)
    position_id: Mapped[int | None] = mapped_column(BigInteger)
    aged_id: Mapped[int | None] = mapped_column(BigInteger)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_alerts_occurred_at", "occurred_at"),)


class Signal(Base):
    """One enqueued task message, recorded by the producer before it is sent.

    The broker can lose a message after a worker popped it and before any of
    our code ran (a kill or a Redis restart in between); the recovery sweep
    sends again the rows whose order never appeared (``workers.flows.recovery``).
    """

    __tablename__ = "signals"

    # The Celery task id; a redelivery reuses it, so the producer's result handle still resolves.
    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(64), nullable=False)
    signal_id: Mapped[str] = mapped_column(Text, nullable=False)
    # None when the leg cannot be derived: validation rejects such a signal by its id.
    client_order_id: Mapped[str | None] = mapped_column(String(36))
    # The client order id again, unique: one recorded message per (signal id, leg).
    # None for messages that are not orders, and for rows recorded before the rule.
    idempotency_key: Mapped[str | None] = mapped_column(String(36))
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _now_column()
    last_sent_at: Mapped[datetime] = _now_column()
    sends: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # arrived (a worker recorded it) or expired (never arrived, too old to send again).
    outcome: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        Index("ix_signals_signal_id", "signal_id"),
        Index("uq_signals_idempotency_key", "idempotency_key", unique=True),
        # The recovery sweep reads only the signals not yet seen arriving.
        Index("ix_signals_unsettled", "last_sent_at", postgresql_where=text("settled_at IS NULL")),
    )


class KillSwitch(Base):
    """The kill switch as it was last set: one row, written with its event.

    Redis holds the copy every order reads; when Redis has lost it (a restart
    without persistence, a flush), this row is what the switch is.
    """

    __tablename__ = "kill_switch"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, default=1)
    engaged: Mapped[bool] = mapped_column(Boolean, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    set_by: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)
