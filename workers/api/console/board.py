"""What the console shows, read from PostgreSQL (``workers.store.reports``) and Redis.

Reads only: nothing here asks an exchange. Prices are the reference prices execq
cached (``workers.exchange.prices``: written by every order's validation, the aged
sweep and the streams), shown with their age; none when nothing read one in the
last ``PRICE_CACHE_TTL_S``. Everything blocks: the routes call it in the thread pool.

The aged chart's price line is what the console sampled from that cache (at most
every ``SAMPLE_EVERY_S`` while a console page is open, the last ``SAMPLES_KEPT``),
plus the prices the aged sweep recorded with its events (a target reached or left,
a close claimed); the target line is the one the episode's events recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from workers import redis_keys
from workers.api.console import chart, measures
from workers.exchange.prices import PRICE_CACHE_TTL_S, queue_cached_price_read
from workers.exchange.ratelimit import RateLimit
from workers.execution.order_state import IN_FLIGHT, RESTING
from workers.redis_client import get_redis
from workers.settings import Settings
from workers.store import reports

SAMPLE_EVERY_S = 2.0
SAMPLES_KEPT = 1800
# An episode's samples outlive it by this much (a closed episode's chart stays readable).
SAMPLES_TTL_S = 2 * 24 * 3600
ALERTS_WINDOW = timedelta(hours=24)
ORDERS_SHOWN = 100

# Appends one sample unless the newest is younger than ARGV[2] ms; trims; renews expiry.
_SAMPLE = """
local last = redis.call('LINDEX', KEYS[1], -1)
if last then
    local at = tonumber(string.match(last, '^(%d+)'))
    if at and tonumber(ARGV[1]) - at < tonumber(ARGV[2]) then
        return 0
    end
end
redis.call('RPUSH', KEYS[1], ARGV[1] .. ' ' .. ARGV[3])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# Events of an episode whose payload says what its target was from then on.
_TARGET_EVENTS = (
    "aged_detected",
    "aged_phase_changed",
    "aged_target_changed",
    "aged_tolerance_changed",
)
# Events whose payload carries the price the sweep saw, and how the chart labels them.
_PRICE_EVENTS = {
    "aged_target_reached": "target reached",
    "aged_target_left": "target left",
    "aged_close_claimed": "close sent",
}


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


@dataclass(frozen=True)
class CachedPrice:
    price: Decimal
    age_s: float


def cached_prices(pairs: set[tuple[str, str]]) -> dict[tuple[str, str], CachedPrice]:
    """The cached reference price of each (account, symbol) that has one."""
    ordered = sorted(pairs)
    if not ordered:
        return {}
    with get_redis().pipeline(transaction=False) as pipe:
        for account, symbol in ordered:
            queue_cached_price_read(pipe, account, symbol)
        replies = pipe.execute()
    prices = {}
    for index, pair in enumerate(ordered):
        raw, ttl_ms = replies[2 * index], replies[2 * index + 1]
        price = _decimal(raw)
        if price is not None:
            age_s = max(0.0, PRICE_CACHE_TTL_S - max(0, int(ttl_ms)) / 1000)
            prices[pair] = CachedPrice(price, age_s)
    return prices


# --- accounts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountView:
    name: str
    exchange: str
    mode: str
    # Why the exchange refused the account's key (every open is refused), or None.
    refused: str | None
    streams: list[measures.StreamHealth]
    limit: RateLimit
    headroom: float
    cooldown_s: float


def accounts(settings: Settings) -> list[AccountView]:
    configured = settings.accounts
    with get_redis().pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.hgetall(redis_keys.STREAMS_LAST_ALIVE)
        for account in configured:
            pipe.get(redis_keys.rate_limit_bucket(account.name))
            pipe.pttl(redis_keys.rate_limit_cooldown(account.name))
            pipe.get(redis_keys.account_refused(account.name))
        replies = pipe.execute()
    (seconds, microseconds), last_alive = replies[0], replies[1]
    now_ms = seconds * 1000 + microseconds / 1000
    views = []
    for index, account in enumerate(configured):
        bucket, cooldown_ms, refused = replies[2 + 3 * index : 5 + 3 * index]
        limit = RateLimit(settings.rate_limit_for(account), settings.rate_limit_burst)
        tat = _decimal(bucket)
        views.append(
            AccountView(
                name=account.name,
                exchange=account.ccxt_class,
                mode=account.mode,
                refused=refused,
                streams=measures.stream_health(
                    last_alive, account.name, now_ms / 1000, settings.streams.stale_after_s
                ),
                limit=limit,
                headroom=measures.rate_limit_headroom(
                    None if tat is None else float(tat), now_ms, limit
                ),
                cooldown_s=max(0, int(cooldown_ms)) / 1000,
            )
        )
    return views


# --- positions ------------------------------------------------------------------------------


def positions() -> list[dict[str, Any]]:
    """Open positions, by account, with their mark (the cached price) and unrealised PnL."""
    rows = sorted(reports.open_positions(), key=lambda row: (row["account"], row["symbol"]))
    marks = cached_prices({(row["account"], row["symbol"]) for row in rows})
    for row in rows:
        mark = marks.get((row["account"], row["symbol"]))
        row["mark"] = mark
        row["unrealised"] = measures.unrealised(
            row["side"], row["size"], row["entry_price"], mark.price if mark else None
        )
    return rows


# --- aged episodes --------------------------------------------------------------------------


def aged(now: datetime) -> list[dict[str, Any]]:
    """Tracked aged episodes with the current price, the distance to their target and
    the time in their phase, by phase; records a chart sample for each."""
    rows = reports.active_aged()
    prices = cached_prices({(row["account"], row["symbol"]) for row in rows})
    for row in rows:
        price = prices.get((row["account"], row["symbol"]))
        row["price"] = price
        row["distance"] = measures.distance_to_target(
            row["side"], price.price if price else None, row["target_price"]
        )
        row["in_phase_s"] = max(0.0, (now - row["phase_changed_at"]).total_seconds())
    _sample(rows, now)
    return sorted(rows, key=lambda row: (row["phase"], row["id"]))


def _sample(rows: list[dict[str, Any]], now: datetime) -> None:
    due = [row for row in rows if row["price"] is not None and row["target_price"] is not None]
    if not due:
        return
    client = get_redis()
    script = client.register_script(_SAMPLE)
    now_ms = int(now.timestamp() * 1000)
    with client.pipeline(transaction=False) as pipe:
        for row in due:
            script(
                keys=[redis_keys.console_aged_prices(row["id"])],
                args=[
                    now_ms,
                    int(SAMPLE_EVERY_S * 1000),
                    f"{row['price'].price} {row['target_price']}",
                    SAMPLES_KEPT,
                    SAMPLES_TTL_S,
                ],
                client=pipe,
            )
        pipe.execute()


@dataclass(frozen=True)
class EpisodeChart:
    episode: dict[str, Any]
    chart: chart.Chart
    sampled: int = 0
    notes: list[str] = field(default_factory=list)


def episode_chart(aged_id: int, now: datetime) -> EpisodeChart | None:
    """The chart of one episode, from its detection to now (or its close); None when
    there is no such episode."""
    episode = reports.aged_episode(aged_id)
    if episode is None:
        return None
    events = reports.recent_events(aged_id=aged_id, limit=1000)
    targets: list[chart.Point] = []
    markers: list[chart.Marker] = []
    for event in events:
        payload = event["payload"] or {}
        if event["type"] in _TARGET_EVENTS:
            target = _decimal(payload.get("target_price"))
            if target is not None:
                targets.append(chart.Point(event["occurred_at"], target))
        elif event["type"] in _PRICE_EVENTS:
            price = _decimal(payload.get("price"))
            if price is not None:
                markers.append(
                    chart.Marker(event["occurred_at"], price, _PRICE_EVENTS[event["type"]])
                )
    if episode["closed_at"] is not None and episode["close_price"] is not None:
        markers.append(chart.Marker(episode["closed_at"], episode["close_price"], "closed"))
    prices: list[chart.Point] = []
    for entry in get_redis().lrange(redis_keys.console_aged_prices(aged_id), 0, -1):
        parts = entry.split(" ")
        price = _decimal(parts[1]) if len(parts) == 3 and parts[0].isdigit() else None
        if price is not None:
            at = datetime.fromtimestamp(int(parts[0]) / 1000, UTC)
            prices.append(chart.Point(at, price))
    start = episode["detected_at"]
    end = episode["closed_at"] or now
    if prices and prices[0].at < start:
        start = prices[0].at
    drawn = chart.price_against_target(prices, targets, markers, start, max(end, start))
    return EpisodeChart(episode, drawn, sampled=len(prices))


# --- orders, alerts, events -----------------------------------------------------------------


@dataclass(frozen=True)
class OrdersView:
    counts: dict[str, int]
    in_doubt: list[dict[str, Any]]
    resting: list[dict[str, Any]]


def orders(now: datetime) -> OrdersView:
    """Orders not finished: in doubt (intent, submitting, ``unknown``) and resting, with
    their age and time in their status."""
    counts, rows = reports.orders_in_flight(limit=ORDERS_SHOWN)
    for row in rows:
        row["age_s"] = max(0.0, (now - row["created_at"]).total_seconds())
        row["in_status_s"] = max(0.0, (now - row["updated_at"]).total_seconds())
    # Not on the book: recorded, being sent, or sent with an outcome not known yet.
    waiting = {status.value for status in IN_FLIGHT - RESTING}
    resting = {status.value for status in RESTING}
    return OrdersView(
        counts=counts,
        in_doubt=[row for row in rows if row["status"] in waiting],
        resting=[row for row in rows if row["status"] in resting],
    )


def alerts(now: datetime) -> list[dict[str, Any]]:
    return reports.recent_alerts(since=now - ALERTS_WINDOW)
