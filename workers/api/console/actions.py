"""The console's actions: the kill switch, cancelling an order, liquidating everything.

Each goes in two steps. The form is checked here, field by field (``parse_action``),
and answered with a confirmation page; the confirmation token it carries is bound
to the session and to exactly the checked action, lives ``CONFIRMATION_TTL_S`` and
is used once (``Confirmations.redeem``), so a repeated or forged confirmation does
nothing. Both steps need the ``operate`` scope and the session's CSRF token.

Every action is an event naming the key that did it: the kill switch's own
``kill_switch_on``/``kill_switch_off`` (``set_by`` and ``api_key``), and
``cancel_requested`` / ``liquidation_requested`` with the task they enqueued.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis

from workers import redis_keys
from workers.api.console.forms import CLIENT_ORDER_ID, CSRF_FIELD, InvalidField, printable_line
from workers.api.console.sessions import ConsoleSession

# Seconds between the confirmation page and the click that confirms it.
CONFIRMATION_TTL_S = 120
MAX_REASON_CHARS = 200
CONFIRMATION_FIELD = "confirmation"
SOURCE = "console"


def _only(form: Mapping[str, str], allowed: set[str]) -> None:
    unexpected = sorted(set(form) - allowed - {CSRF_FIELD})
    if unexpected:
        raise InvalidField(unexpected[0][:40], "is not a field of this form")


def _reason(form: Mapping[str, str]) -> str:
    text = (form.get("reason") or "").strip()
    if not text:
        raise InvalidField("reason", "is required: say why, for the record")
    if len(text) > MAX_REASON_CHARS:
        raise InvalidField("reason", f"is longer than {MAX_REASON_CHARS} characters")
    if not printable_line(text):
        raise InvalidField("reason", "must be one line of printable text")
    return text


@dataclass(frozen=True)
class KillSwitchAction:
    on: bool
    reason: str
    kind: Literal["kill_switch"] = "kill_switch"

    @property
    def title(self) -> str:
        return "Turn the kill switch " + ("ON" if self.on else "off")

    @property
    def consequence(self) -> str:
        if self.on:
            return (
                "Every order that is not reduce-only is refused, on every account, until "
                "someone turns it off. Closes, aged closes and liquidation still run."
            )
        return "Orders are accepted again on every account."


@dataclass(frozen=True)
class CancelAction:
    client_order_id: str
    kind: Literal["cancel"] = "cancel"

    @property
    def title(self) -> str:
        return "Cancel an order"

    @property
    def consequence(self) -> str:
        return (
            "The order is cancelled on the exchange, exactly once; a fill that came before "
            "the cancel is recorded as a fill."
        )


@dataclass(frozen=True)
class LiquidateAction:
    reason: str
    kind: Literal["liquidate"] = "liquidate"

    @property
    def title(self) -> str:
        return "Liquidate everything"

    @property
    def consequence(self) -> str:
        return (
            "The kill switch goes on, every open order that could open a position is "
            "cancelled, and every position on every account is closed reduce-only and "
            "checked flat. The kill switch stays on until someone turns it off."
        )


Action = KillSwitchAction | CancelAction | LiquidateAction
ACTION_KINDS = ("kill_switch", "cancel", "liquidate")


def parse_action(kind: str, form: Mapping[str, str]) -> Action:
    """The action a form asks for; raises ``InvalidField`` naming the first bad field."""
    if kind == "kill_switch":
        _only(form, {"state", "reason"})
        state = form.get("state")
        if state not in ("on", "off"):
            raise InvalidField("state", "must be 'on' or 'off'")
        return KillSwitchAction(on=state == "on", reason=_reason(form))
    if kind == "cancel":
        _only(form, {"client_order_id"})
        client_order_id = (form.get("client_order_id") or "").strip()
        if not CLIENT_ORDER_ID.fullmatch(client_order_id):
            raise InvalidField("client_order_id", "must be 1 to 36 letters, digits or . : / _ -")
        return CancelAction(client_order_id)
    if kind == "liquidate":
        _only(form, {"reason"})
        return LiquidateAction(reason=_reason(form))
    raise InvalidField("action", "is not one of the console's actions")


def _action_from_json(data: Mapping[str, Any]) -> Action:
    kind = data.get("kind")
    if kind == "kill_switch":
        return KillSwitchAction(on=bool(data["on"]), reason=str(data["reason"]))
    if kind == "cancel":
        return CancelAction(str(data["client_order_id"]))
    if kind == "liquidate":
        return LiquidateAction(str(data["reason"]))
    raise ValueError(f"not an action: {kind!r}")


class Confirmations:
    """Checked actions waiting for their confirmation, one use each, in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def issue(self, session: ConsoleSession, action: Action) -> str:
        token = secrets.token_urlsafe(24)
        pending = {"session": session.handle, "action": asdict(action)}
        self._client.set(
            redis_keys.console_confirmation(_token_hash(token)),
            json.dumps(pending),
            ex=CONFIRMATION_TTL_S,
        )
        return token

    def redeem(self, session: ConsoleSession, token: str | None) -> Action | None:
        """The action ``token`` confirms for this session, once; None when it was used,
        expired, never issued, or issued to another session."""
        if not token or len(token) > 64:
            return None
        raw = self._client.getdel(redis_keys.console_confirmation(_token_hash(token)))
        if raw is None:
            return None
        pending = json.loads(raw)
        if pending.get("session") != session.handle:
            return None
        return _action_from_json(pending["action"])


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --- doing it -------------------------------------------------------------------------------


def perform(action: Action, key_name: str) -> str:
    """Do a confirmed action on behalf of the key ``key_name``; returns the line the
    operator sees. Raises what the stores and the broker raise (nothing is done then)."""
    if isinstance(action, KillSwitchAction):
        return _set_kill_switch(action, key_name)
    if isinstance(action, CancelAction):
        return _cancel(action, key_name)
    return _liquidate(action, key_name)


def _actor(key_name: str) -> dict[str, str]:
    return {"api_key": key_name, "source": SOURCE}


def _set_kill_switch(action: KillSwitchAction, key_name: str) -> str:
    from workers.coordination import set_kill_switch

    state = set_kill_switch(
        action.on,
        action.reason,
        set_by=f"api key {key_name} ({SOURCE})",
        payload=_actor(key_name),
    )
    return f"Kill switch {'ON' if state.on else 'off'}: {action.reason}"


def _cancel(action: CancelAction, key_name: str) -> str:
    from workers.app import app as celery_app
    from workers.store.db import session_scope
    from workers.store.events import record_event
    from workers.store.orders import load_order

    order = load_order(action.client_order_id)
    if order is None:
        raise InvalidField("client_order_id", "names no order execq knows")
    task_id = str(uuid.uuid4())
    # The event commits only once the broker took the task: no record of a cancel
    # that was never sent.
    with session_scope() as session:
        record_event(
            session,
            "cancel_requested",
            order_id=order.id,
            client_order_id=order.client_order_id,
            signal_id=order.signal_id,
            account=order.account,
            symbol=order.symbol,
            payload={**_actor(key_name), "task_id": task_id, "status": str(order.status)},
        )
        celery_app.send_task(
            "cancel_order", kwargs={"client_order_id": order.client_order_id}, task_id=task_id
        )
    return f"Cancel of {order.client_order_id} sent (task {task_id})"


def _liquidate(action: LiquidateAction, key_name: str) -> str:
    from workers.app import app as celery_app
    from workers.store.db import session_scope
    from workers.store.events import record_event

    # The liquidation takes its task's id as its own: its events carry this id.
    liquidation_id = str(uuid.uuid4())
    reason = f"{action.reason} (api key {key_name}, {SOURCE})"
    with session_scope() as session:
        record_event(
            session,
            "liquidation_requested",
            payload={**_actor(key_name), "reason": action.reason, "liquidation_id": liquidation_id},
        )
        celery_app.send_task(
            "emergency_liquidate_all", kwargs={"reason": reason}, task_id=liquidation_id
        )
    return f"Liquidation {liquidation_id} sent: the kill switch goes on and every position closes"
