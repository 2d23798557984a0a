"""The producer API: record each signal in the outbox, then enqueue it by task name.

``submit_market_order`` / ``submit_limit_order`` write the message to the
``signals`` table in PostgreSQL, commit, and only then send it to the broker
with the same task id. The broker alone can lose a message: kombu's Redis
transport pops it before recording it as unacknowledged, so a worker killed
in between (or a Redis restart, and a Redis without persistence loses its
whole queue) drops it before any execq code runs. The recovery sweep sends
every recorded signal that never reached a worker again
(``workers.execution.outbox``), and the client order id makes a second copy
harmless. A call that returns has recorded the signal; one that raises after
recording raises ``NotEnqueued`` (the broker is down): the sweep sends it
later, ``Producer.publish`` sends it now, and submitting the same signal
again is safe too. (When the result store, the same Redis by default, is down
as well, Celery's ``send_task`` first spends about 20 s reconnecting to it
and raises ``RuntimeError``; the signal is recorded all the same.)

Before anything is recorded, an order task's arguments pass the static checks
of ``workers.execution.signal``: an invalid one raises ``SignalRejected`` with
its one-line reason and a ``signal_rejected`` event, and nothing is recorded or
enqueued (the sweep could only send it again and again). A signal id with its
leg is an idempotency key: the same order under a recorded key returns the
first message's result; another order under it raises ``SignalConflict``
(event ``signal_conflict``). The worker checks the rest (the market's symbol,
steps and limits) and refuses the same way.

Only the task names and JSON arguments cross the broker, so ``send_task``
with these kwargs from any Celery client works the same, without the outbox
and its guarantee::

    app.send_task("execute_market_order", kwargs={
        "signal_id": "bot7-2026-11-21T18:00:00Z-eth", "exchange": "binance",
        "symbol": "ETH/USDT:USDT", "side": "buy", "amount": "0.3",
        "reduce_only": False, "purpose": "open",
    })

``Producer`` is the same for a given Celery app and database engine (the
bench and chaos runs send to their scratch broker and database that way).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import redis
from kombu.exceptions import OperationalError as KombuOperationalError

from workers.execution.signal import (
    TASK_ARGUMENTS,
    AnyOrderArguments,
    SignalConflict,
    SignalLimits,
    SignalRefused,
    SignalRejected,
    arguments_for_task,
)
from workers.store.outbox import OutboxConflict, OutboxMessage, record_signals
from workers.store.signals import insert_refusal, refusal_event

BROKER_ERRORS = (KombuOperationalError, redis.RedisError, OSError)

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult
    from sqlalchemy import Engine

__all__ = [
    "NotEnqueued",
    "Producer",
    "SignalConflict",
    "SignalRefused",
    "SignalRejected",
    "default_producer",
    "order_kwargs",
    "submit_limit_order",
    "submit_market_order",
]


class NotEnqueued(Exception):
    """The messages are recorded in the outbox but the broker did not take them.

    The recovery sweep sends them; ``Producer.publish(messages)`` sends them now.
    """

    def __init__(self, messages: Sequence[OutboxMessage], cause: Exception) -> None:
        super().__init__(
            f"{len(messages)} signal(s) recorded but not enqueued ({cause}); "
            "the recovery sweep will send them"
        )
        self.messages = list(messages)


class Producer:
    """Sends task messages through the outbox: checked, recorded in PostgreSQL, then enqueued.

    ``limits`` are the static checks' settings (default: this process's settings:
    its accounts, signal id length and metadata size).
    """

    def __init__(self, app: Celery, engine: Engine, limits: SignalLimits | None = None) -> None:
        self.app = app
        self.engine = engine
        self._limits = limits

    @property
    def limits(self) -> SignalLimits:
        if self._limits is None:
            from workers.settings import get_settings

            self._limits = SignalLimits.of(get_settings())
        return self._limits

    def check(self, task_name: str, kwargs: dict[str, Any]) -> AnyOrderArguments | None:
        """The static checks of an order task's arguments (other tasks pass unchecked).

        Raises ``SignalRejected`` with the one-line reason, after recording the
        ``signal_rejected`` event; nothing is recorded in the outbox or enqueued.
        """
        if task_name not in TASK_ARGUMENTS:
            return None
        try:
            return arguments_for_task(task_name, (), kwargs, self.limits)
        except SignalRejected as refusal:
            self._record(refusal, task_name, kwargs)
            raise

    def send(self, task_name: str, kwargs: dict[str, Any]) -> AsyncResult:
        return self.send_many([(task_name, kwargs)])[0]

    def send_many(self, messages: Sequence[tuple[str, dict[str, Any]]]) -> list[AsyncResult]:
        """Check all ``messages``, record them in one transaction, then enqueue each in order.

        A message whose signal id and leg are recorded already for the same order
        is not recorded again: its recorded message is sent again, and its result
        is the first order's. Raises ``SignalRejected`` (an invalid argument) or
        ``SignalConflict`` (the key is recorded for another order) before anything
        of the batch is recorded, each with its event recorded; ``NotEnqueued`` when
        the broker refuses after the record committed.
        """
        for task_name, kwargs in messages:
            self.check(task_name, kwargs)
        outbox = [OutboxMessage.new(task_name, kwargs) for task_name, kwargs in messages]
        return self.publish(self.record(outbox))

    def record(self, outbox: Sequence[OutboxMessage]) -> list[OutboxMessage]:
        """Record checked messages in one transaction; returns, for each, the message to
        send: itself, or the one recorded earlier under its key for the same order (a
        caller tells a repeat by its task id). Raises ``SignalConflict`` (with its event
        recorded, nothing of the batch recorded) for a key recorded for another order."""
        try:
            with self.engine.begin() as connection:
                return record_signals(connection, outbox)
        except OutboxConflict as exc:
            self._record(exc.refusal, exc.message.task_name, exc.message.kwargs)
            raise exc.refusal from None

    def _record(self, refusal: SignalRefused, task_name: str, kwargs: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            insert_refusal(connection, refusal_event(refusal, kwargs, task_name=task_name))

    def publish(self, outbox: Sequence[OutboxMessage]) -> list[AsyncResult]:
        """Enqueue recorded messages (again): the same task ids, so a copy is harmless."""
        results = []
        for index, message in enumerate(outbox):
            try:
                results.append(
                    self.app.send_task(
                        message.task_name, kwargs=message.kwargs, task_id=message.task_id
                    )
                )
            except BROKER_ERRORS as exc:
                raise NotEnqueued(outbox[index:], exc) from exc
        return results


def order_kwargs(
    signal_id: str,
    exchange: str,
    symbol: str,
    side: str,
    amount: Decimal | str,
    *,
    reduce_only: bool = False,
    purpose: str = "open",
    leg: str | None = None,
    position_id: int | None = None,
    metadata: dict[str, Any] | None = None,
    enqueued_at_ms: float | None = None,
) -> dict[str, Any]:
    """The JSON arguments of ``execute_market_order`` (a limit order adds price and time in force)."""
    kwargs: dict[str, Any] = {
        "signal_id": signal_id,
        "exchange": exchange,
        "symbol": symbol,
        "side": side,
        "amount": str(amount),
        "reduce_only": reduce_only,
        "purpose": purpose,
        # Enqueue time lets the worker measure enqueue -> exchange ack.
        "metadata": {
            **(metadata or {}),
            "enqueued_at_ms": round(enqueued_at_ms or time.time() * 1000, 3),
        },
    }
    if leg is not None:
        kwargs["leg"] = leg
    if position_id is not None:
        kwargs["position_id"] = position_id
    return kwargs


def default_producer() -> Producer:
    """The producer on the configured broker and database (``workers.app``, DATABASE_URL)."""
    from workers.app import app
    from workers.store.db import get_engine

    return Producer(app, get_engine())


def submit_market_order(
    signal_id: str,
    exchange: str,
    symbol: str,
    side: str,
    amount: Decimal | str,
    *,
    reduce_only: bool = False,
    purpose: str = "open",
    leg: str | None = None,
    position_id: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> AsyncResult:
    """Record and enqueue one market order; the returned result resolves to the order summary."""
    kwargs = order_kwargs(
        signal_id,
        exchange,
        symbol,
        side,
        amount,
        reduce_only=reduce_only,
        purpose=purpose,
        leg=leg,
        position_id=position_id,
        metadata=metadata,
    )
    return default_producer().send("execute_market_order", kwargs)


def submit_limit_order(
    signal_id: str,
    exchange: str,
    symbol: str,
    side: str,
    amount: Decimal | str,
    price: Decimal | str,
    *,
    time_in_force: str = "GTC",
    reduce_only: bool = False,
    purpose: str = "open",
    leg: str | None = None,
    position_id: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> AsyncResult:
    """Record and enqueue one limit order (GTC or IOC); the result resolves to the order summary."""
    kwargs = order_kwargs(
        signal_id,
        exchange,
        symbol,
        side,
        amount,
        reduce_only=reduce_only,
        purpose=purpose,
        leg=leg,
        position_id=position_id,
        metadata=metadata,
    )
    kwargs.update(price=str(price), time_in_force=time_in_force)
    return default_producer().send("execute_limit_order", kwargs)
