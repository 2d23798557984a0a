"""Signals over HTTP into the outbox: checked, recorded, enqueued, as a Python producer's.

A request's arguments pass ``Producer.check`` (the order schema, with this
deployment's accounts and limits); the message is recorded in the ``signals``
outbox (``Producer.record``) and enqueued (``Producer.publish``). So a signal
accepted here is delivered like any other: when the broker loses it, or refuses
it (``NotEnqueued``), the recovery sweep sends it again; the client order id
makes a second copy harmless.

Idempotency: the signal id and leg are the key (the body's ``signal_id``, or the
``Idempotency-Key`` header's value when the body has none). The same key with
the same order answers 200 with the signal's current state; with another order,
422 ``signal-conflict`` (event ``signal_conflict``). While a request records a
key, it holds a Redis marker (``redis_keys.api_recording``): a second request
with that key meanwhile is answered 409 at once instead of waiting for the first.

Every refusal after authentication is a ``signal_rejected`` event naming the
field and the reason (the schema's from ``Producer.check``; a body that is no
JSON object, too large, or a stale alert, here with the key's name): nothing is
recorded in the outbox or enqueued, nothing reaches the exchange.

Everything here blocks (Redis, PostgreSQL, the broker): the routes run it in
the thread pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NoReturn
from urllib.parse import quote

from starlette.responses import JSONResponse

from workers import redis_keys
from workers.api import problems, tradingview
from workers.api.auth import SIGNAL, ApiKey, KeyRing, authorised
from workers.api.bodies import InvalidBody, decode_json
from workers.api.problems import Problem
from workers.api.ratelimit import KeyRateLimiter
from workers.coordination import LockNotAcquired, held_lock
from workers.execution.signal import (
    LIMIT_TASK,
    MARKET_TASK,
    SignalConflict,
    SignalRefused,
    SignalRejected,
    plain_decimal,
    shown,
)
from workers.producer import NotEnqueued, Producer
from workers.store.orders import OrderSnapshot
from workers.store.outbox import REFUSAL_EVENTS, OutboxMessage
from workers.store.reports import SignalRecord, signal_record
from workers.store.signals import insert_refusal, refusal_event

logger = logging.getLogger("execq.api")

SIGNALS_PATH = "/v1/signals"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# A request records its signal in milliseconds; the marker outlives a stalled one
# (PostgreSQL or the broker slow) and expires if the API process dies holding it.
RECORDING_MARKER_TTL_S = 10.0
# What a 409 asks the producer to wait before it asks again.
IN_PROGRESS_RETRY_AFTER_S = 1
# Events shown with a signal's state: the latest ones.
STATUS_EVENTS = 200


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def status_url(signal_id: str) -> str:
    return f"{SIGNALS_PATH}/{quote(signal_id, safe='')}"


class Ingress:
    def __init__(
        self,
        producer: Producer,
        keys: KeyRing,
        limiter: KeyRateLimiter,
        *,
        max_lag_s: float,
    ) -> None:
        self.producer = producer
        self.keys = keys
        self.limiter = limiter
        self.max_lag_s = max_lag_s

    # --- POST /v1/signals ------------------------------------------------------------------

    def post_signal(
        self, caller: ApiKey, body: bytes | None, idempotency_key: str | None
    ) -> Answer:
        """``body`` None: it was larger than the cap."""
        self.limiter.take(caller.name)
        if body is None:
            self._refuse(caller, _too_large(), {}, problems.BODY_TOO_LARGE)
        try:
            payload = decode_json(body)
        except InvalidBody as exc:
            self._refuse(caller, SignalRejected(str(exc), "body"), {}, problems.INVALID_JSON)
        if not isinstance(payload, dict):
            refusal = SignalRejected.of(
                "body", f"must be a JSON object of named arguments, got {shown(payload)}"
            )
            self._refuse(caller, refusal, {}, problems.INVALID_JSON)
        if idempotency_key is not None:
            payload = self._with_key(caller, payload, idempotency_key)
        task_name = LIMIT_TASK if payload.get("price") is not None else MARKET_TASK
        return self.accept(caller, task_name, payload)

    def _with_key(self, caller: ApiKey, payload: dict[str, Any], key: str) -> dict[str, Any]:
        given = payload.get("signal_id")
        if given is None:
            return {**payload, "signal_id": key}
        if given != key:
            refusal = SignalRejected.of(
                "signal_id",
                f"{shown(given)} differs from the {IDEMPOTENCY_HEADER} header {shown(key)}; "
                "send one, or both the same",
            )
            self._refuse(caller, refusal, payload, problems.INVALID_SIGNAL)
        return payload

    # --- POST /v1/webhooks/tradingview -----------------------------------------------------

    def post_tradingview(self, body: bytes, bearer: str | None, now: datetime) -> Answer:
        """An alert authenticated by its ``secret`` (or a bearer key)."""
        try:
            payload = decode_json(body, exact_numbers=True)
        except InvalidBody as exc:
            raise Problem(problems.INVALID_JSON, str(exc), field="body") from None
        if not isinstance(payload, dict):
            raise Problem(
                problems.INVALID_JSON,
                f"body: must be a JSON object (the alert message), got {shown(payload)}",
                field="body",
            )
        secret = payload.pop("secret", None)
        presented = secret if isinstance(secret, str) else bearer
        caller = authorised(None if presented is None else self.keys.by_key(presented), SIGNAL)
        self.limiter.take(caller.name)
        try:
            alert = tradingview.parse_alert(payload)
            task_name, kwargs = tradingview.alert_order(
                alert,
                key_name=caller.name,
                symbols=caller.symbols,
                now=now,
                max_lag_s=self.max_lag_s,
                max_signal_id_length=self.producer.limits.max_signal_id_length,
            )
        except tradingview.StaleAlert as stale:
            self._refuse(caller, stale, _alert_ids(payload), problems.STALE_ALERT, "tradingview")
        except SignalRejected as refusal:
            self._refuse(
                caller, refusal, _alert_ids(payload), problems.INVALID_SIGNAL, "tradingview"
            )
        return self.accept(caller, task_name, kwargs)

    # --- the one way in ----------------------------------------------------------------------

    def accept(self, caller: ApiKey, task_name: str, kwargs: dict[str, Any]) -> Answer:
        """Check, record and enqueue one order task message; 202 for a new signal, 200 with
        the current state for a repeat. Raises ``Problem`` for every refusal."""
        kwargs = _stamped(kwargs, caller)
        try:
            arguments = self.producer.check(task_name, kwargs)
        except SignalRejected as refusal:
            raise _signal_problem(refusal, kwargs) from None
        assert arguments is not None  # an order task's arguments always parse or raise
        message = OutboxMessage.new(task_name, kwargs)
        try:
            with held_lock(
                redis_keys.api_recording(arguments.client_order_id), RECORDING_MARKER_TTL_S
            ):
                [to_send] = self.producer.record([message])
                enqueued = self._publish(to_send)
        except LockNotAcquired:
            raise Problem(
                problems.IN_PROGRESS,
                f"signal {shown(arguments.signal_id)} leg {arguments.effective_leg} is being "
                "recorded by another request; ask again for its state",
                headers={"Retry-After": str(IN_PROGRESS_RETRY_AFTER_S)},
                signal_id=arguments.signal_id,
            ) from None
        except SignalConflict as conflict:
            raise _signal_problem(conflict, kwargs) from None
        if to_send.task_id != message.task_id:
            return Answer(200, status_document(signal_record(arguments.signal_id, STATUS_EVENTS)))
        url = status_url(arguments.signal_id)
        return Answer(
            202,
            {
                "signal_id": arguments.signal_id,
                "client_order_id": arguments.client_order_id,
                "task_id": message.task_id,
                "state": "queued",
                "enqueued": enqueued,
                "status_url": url,
            },
            headers={"Location": url},
        )

    def _publish(self, message: OutboxMessage) -> bool:
        try:
            self.producer.publish([message])
        except NotEnqueued as exc:
            # Recorded: the recovery sweep sends it. The answer says so.
            logger.warning("signal recorded, not enqueued: %s", exc)
            return False
        return True

    # --- GET /v1/signals/{signal_id} -------------------------------------------------------

    def signal_status(self, caller: ApiKey, signal_id: str) -> Answer:
        self.limiter.take(caller.name)
        record = signal_record(signal_id, STATUS_EVENTS)
        if not record.known:
            raise Problem(
                problems.NOT_FOUND,
                f"no signal {shown(signal_id)} was recorded or refused",
                signal_id=signal_id,
            )
        return Answer(200, status_document(record))

    # --- refusals ----------------------------------------------------------------------------

    def _refuse(
        self,
        caller: ApiKey,
        refusal: SignalRefused,
        arguments: Mapping[str, Any],
        kind: problems.ProblemType,
        source: str = "api",
    ) -> NoReturn:
        """Record the refusal's event (naming the key) and raise its problem."""
        row = refusal_event(refusal, arguments)
        row["payload"] = {**row["payload"], "api_key": caller.name, "source": source}
        with self.producer.engine.begin() as connection:
            insert_refusal(connection, row)
        raise _signal_problem(refusal, arguments, kind)


def _too_large() -> SignalRejected:
    return SignalRejected.of("body", "is larger than EXECQ_API_MAX_BODY_BYTES")


def _alert_ids(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What a refused alert's event can name: its account and ticker."""
    return {"exchange": payload.get("exchange"), "symbol": payload.get("ticker")}


def _stamped(kwargs: dict[str, Any], caller: ApiKey) -> dict[str, Any]:
    """The arguments with the key's name and the receive time in the metadata (not part of
    the idempotency comparison); metadata that is not an object is left to the schema."""
    metadata = kwargs.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return kwargs
    return {
        **kwargs,
        "metadata": {
            **(metadata or {}),
            "api_key": caller.name,
            "enqueued_at_ms": round(time.time() * 1000, 3),
        },
    }


def _signal_problem(
    refusal: SignalRefused,
    arguments: Mapping[str, Any],
    kind: problems.ProblemType | None = None,
) -> Problem:
    if kind is None:
        kind = (
            problems.SIGNAL_CONFLICT
            if isinstance(refusal, SignalConflict)
            else problems.INVALID_SIGNAL
        )
    signal_id = arguments.get("signal_id")
    return Problem(
        kind,
        refusal.reason,
        field=refusal.field,
        fields=refusal.fields if isinstance(refusal, SignalConflict) else None,
        signal_id=signal_id if isinstance(signal_id, str) else None,
    )


# --- the state of a signal ---------------------------------------------------------------------


def signal_state(record: SignalRecord) -> str:
    """``queued`` (recorded, no worker has it yet), ``refused``, ``expired`` (never
    delivered, too old to send), ``in_progress`` (an order not finished: in flight,
    resting or unknown) or ``done`` (every order in a final state)."""
    if record.orders:
        return "done" if all(order.terminal for order in record.orders) else "in_progress"
    if any(event["type"] in REFUSAL_EVENTS for event in record.events):
        return "refused"
    if any(message["outcome"] == "expired" for message in record.messages):
        return "expired"
    return "queued"


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return plain_decimal(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def order_view(order: OrderSnapshot) -> dict[str, Any]:
    return {
        "leg": order.leg,
        "purpose": order.purpose,
        "account": order.account,
        "symbol": order.symbol,
        "side": order.side,
        "order_type": order.order_type,
        "price": _json_value(order.price),
        "time_in_force": order.time_in_force,
        "reduce_only": order.reduce_only,
        "created_at": _json_value(order.created_at),
        **order.summary(),
    }


def status_document(record: SignalRecord) -> dict[str, Any]:
    """The body of ``GET /v1/signals/{signal_id}``."""
    refusals = [
        {
            "type": event["type"],
            "field": event["payload"].get("field"),
            "reason": event["payload"].get("reason"),
            "occurred_at": _json_value(event["occurred_at"]),
        }
        for event in record.events
        if event["type"] in REFUSAL_EVENTS
    ]
    return {
        "signal_id": record.signal_id,
        "state": signal_state(record),
        "status_url": status_url(record.signal_id),
        "orders": [order_view(order) for order in record.orders],
        "refusals": refusals,
        "messages": [
            {name: _json_value(value) for name, value in message.items()}
            for message in record.messages
        ],
        "events": [
            {name: _json_value(value) for name, value in event.items()} for event in record.events
        ],
    }
