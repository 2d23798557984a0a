"""What the stream holder (``workers.streams``) hands to the order lifecycle.

An order update or fill pushed by an exchange's stream goes through the same
core as a poll's answer (``record_sighting``, source ``"stream"``), so a fill
seen by the stream and by a poll is recorded and booked once: the order only
moves forward, and booking is guarded by the order's ``booked_filled``.

Who records it depends on who holds the order's lease:

- nobody: :func:`apply_order_update` takes the lease and records it, then
  verifies and books a fill (``tracking.finish``);
- a run (an order task, a cancel): the update is appended to the order's
  Redis list (``redis_keys.stream_order_updates``) for that run. The run reads
  it while it waits for a fill (:func:`wait_for_order_update`), and records
  whatever is left before it ends; an update appended just as the run lets
  go is recorded by whichever side takes the lease next
  (:func:`record_handed_updates`), so none waits for the next tracking sweep.

After every (re)connect, before a stream is trusted, :func:`reconcile_account`
follows every resting or in-doubt order of the account by REST and refreshes
its position cache: the exchange never replays what was pushed while nobody
listened.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from decimal import Decimal
from typing import Any

from workers import redis_keys
from workers.coordination import try_lock
from workers.exchange.errors import VenueError
from workers.exchange.positions import fetch_positions
from workers.exchange.venues.base import ExchangeOrder
from workers.execution.order_state import IN_DOUBT, RESTING
from workers.flows import tracking
from workers.flows.submission import record_sighting
from workers.redis_client import get_redis
from workers.settings import Settings
from workers.store import orders as order_store
from workers.store.orders import OrderSnapshot

__all__ = [
    "apply_order_update",
    "hand_to_run",
    "reconcile_account",
    "record_handed_updates",
    "take_order_updates",
    "wait_for_order_update",
]

logger = logging.getLogger("execq.stream_updates")

# Seconds an update handed to a run is kept: longer than a run waits for a fill, short
# enough that nothing stale is read by a later run (the tracker fetches anyway).
HANDED_UPDATE_TTL_S = 60
SOURCE = "stream"
# Seconds one blocking read of the list may last: below the Redis client's socket timeout.
BLOCK_MAX_S = 2.0


# --- the handed-over list ------------------------------------------------------------------


def _encode(seen: ExchangeOrder) -> str:
    return json.dumps(
        {
            name: str(value) if isinstance(value, Decimal) else value
            for name, value in vars(seen).items()
        }
    )


def _decode(raw: str | bytes) -> ExchangeOrder:
    fields: dict[str, Any] = json.loads(raw)
    for name in ("amount", "filled", "average"):
        if fields.get(name) is not None:
            fields[name] = Decimal(fields[name])
    return ExchangeOrder(**fields)


def hand_to_run(client_order_id: str, seen: ExchangeOrder) -> None:
    """Append ``seen`` to the order's list for the run that holds its lease."""
    key = redis_keys.stream_order_updates(client_order_id)
    pipe = get_redis().pipeline(transaction=True)
    pipe.rpush(key, _encode(seen))
    pipe.expire(key, HANDED_UPDATE_TTL_S)
    pipe.execute()


def take_order_updates(client_order_id: str) -> list[ExchangeOrder]:
    """Every update handed over for the order, oldest first; the list is emptied."""
    key = redis_keys.stream_order_updates(client_order_id)
    pipe = get_redis().pipeline(transaction=True)
    pipe.lrange(key, 0, -1)
    pipe.delete(key)
    raw, _ = pipe.execute()
    return [_decode(item) for item in raw]


def wait_for_order_update(client_order_id: str, timeout_s: float) -> ExchangeOrder | None:
    """The oldest update handed over for the order, waiting up to ``timeout_s`` for one;
    None when none came. Used by the run holding the order's lease."""
    key = redis_keys.stream_order_updates(client_order_id)
    until = time.monotonic() + timeout_s
    while (left_s := until - time.monotonic()) > 0:
        # Each wait stays inside the Redis client's socket timeout.
        answer = get_redis().blpop([key], min(left_s, BLOCK_MAX_S))
        if answer is not None:
            return _decode(answer[1])
    return None


# --- order updates -------------------------------------------------------------------------


def apply_order_update(account: str, seen: ExchangeOrder, settings: Settings) -> str:
    """Record an order update or fill pushed by ``account``'s stream.

    Returns ``"unknown_order"`` (not one of execq's orders on this account: the
    recovery sweep adopts orphans), ``"handed_to_run"`` (a run holds the order),
    ``"recorded"`` (the order changed; a fill is verified and booked) or
    ``"unchanged"``.
    """
    cid = seen.client_order_id
    order = order_store.load_order(cid) if cid else None
    if cid is None or order is None or order.account != account:
        return "unknown_order"
    if order.terminal:
        return "unchanged"  # an order never moves on from its end (streams repeat themselves)
    key = redis_keys.order_lock(cid)
    lease = try_lock(key, settings.order_lock_ttl_s)
    if lease is None:
        hand_to_run(cid, seen)
        # The run may have let go between the two: then nobody would read the list.
        lease = try_lock(key, settings.order_lock_ttl_s)
        if lease is None:
            return "handed_to_run"
        updates = take_order_updates(cid)
    else:
        # Anything a run left behind is older than this update.
        updates = [*take_order_updates(cid), seen]
    try:
        return _record_all(cid, updates, settings)
    finally:
        lease.release()


def record_handed_updates(client_order_id: str, settings: Settings) -> str:
    """Record the updates handed over for an order nobody holds (a run let go just as
    they arrived); ``"busy"`` when someone holds it again (it reads them)."""
    lease = try_lock(redis_keys.order_lock(client_order_id), settings.order_lock_ttl_s)
    if lease is None:
        return "busy"
    try:
        return _record_all(client_order_id, take_order_updates(client_order_id), settings)
    finally:
        lease.release()


def _record_all(client_order_id: str, updates: list[ExchangeOrder], settings: Settings) -> str:
    """Record ``updates`` in order, under the order's lease held by the caller."""
    before = order_store.load_order(client_order_id)
    if before is None or not updates:
        return "unchanged"
    order = before
    for seen in updates:
        if order.terminal:
            break  # an ended order never moves again: the rest are older words
        order = record_sighting(order, seen, SOURCE, settings)
    if _same(order, before):
        return "unchanged"
    tracking.finish(order)
    return "recorded"


def _same(after: OrderSnapshot, before: OrderSnapshot) -> bool:
    return after.status == before.status and after.filled == before.filled


# --- after a (re)connect ---------------------------------------------------------------------


def reconcile_account(account: str, settings: Settings) -> dict[str, int]:
    """Catch up by REST with what a stream may have missed while it was down.

    Follows (``tracking.follow``, under each order's lease) every resting or
    in-doubt order of ``account``, and reads its positions (which refreshes the
    position cache). Counts by outcome, as the tracking sweep names them, plus
    ``positions_read`` or ``positions_failed``.
    """
    counts: Counter[str] = Counter()
    watched = RESTING | IN_DOUBT
    for order in order_store.unfinished_orders(account):
        if order.status in watched:
            counts.update(tracking.follow_if_free(order, settings, watched))
    try:
        fetch_positions(account)
    except VenueError as exc:
        logger.warning("reconcile %s: positions failed: %s", account, exc.describe())
        counts["positions_failed"] += 1
    else:
        counts["positions_read"] += 1
    return dict(counts)
