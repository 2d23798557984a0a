"""Every Redis key execq uses, built in one place.

All keys share the ``execq:`` prefix so an operator can find (or drop) them
with one pattern, and so a shared Redis never collides with another app.
"""

from __future__ import annotations

PREFIX = "execq:"

KILL_SWITCH = PREFIX + "kill-switch"


def position_lock(account: str, symbol: str) -> str:
    return f"{PREFIX}lock:position:{account}:{symbol}"


def order_lock(client_order_id: str) -> str:
    return f"{PREFIX}lock:order:{client_order_id}"


def account_refused(account: str) -> str:
    return f"{PREFIX}account-refused:{account}"


def sweep_lock(name: str) -> str:
    return f"{PREFIX}lock:sweep:{name}"


def sweep_last_run(name: str) -> str:
    return f"{PREFIX}sweep:last-run:{name}"


def rate_limit_bucket(account: str) -> str:
    return f"{PREFIX}ratelimit:{account}:bucket"


def rate_limit_cooldown(account: str) -> str:
    return f"{PREFIX}ratelimit:{account}:cooldown"


def position_cache(account: str, symbol: str) -> str:
    return f"{PREFIX}position-cache:{account}:{symbol}"


def liquidation_lock() -> str:
    return f"{PREFIX}lock:liquidation"


REDBEAT_PREFIX = PREFIX + "redbeat:"


def price_cache(account: str, symbol: str) -> str:
    return f"{PREFIX}price:{account}:{symbol}"


# When each WebSocket stream last showed it was alive, field ``<account>:<stream>``,
# value epoch seconds: the metrics endpoint turns it into ``execq_stream_age_seconds``.
STREAMS_LAST_ALIVE = PREFIX + "streams:last-alive"


def stream_field(account: str, stream: str) -> str:
    return f"{account}:{stream}"


# Each stream's state as its holder last wrote it, field ``<account>:<stream>``, value
# JSON ``{"state", "since", "detail", "holder"}``: what ``execq status`` shows.
STREAMS_STATE = PREFIX + "streams:state"
# Reconnects per stream since the cluster started, field ``<account>:<stream>``.
STREAMS_RECONNECTS = PREFIX + "streams:reconnects"


def stream_lease(account: str) -> str:
    """The lease of the one process holding ``account``'s streams."""
    return f"{PREFIX}lock:streams:{account}"


def stream_order_updates(client_order_id: str) -> str:
    """Order updates a stream saw while a run held the order's lease, for that run."""
    return f"{PREFIX}streams:order-updates:{client_order_id}"


# kombu's Redis transport keeps a Celery queue in one list per priority step: the
# queue's name for the lowest step, ``<name>\x06\x16<step>`` for the others.
CELERY_PRIORITY_SEPARATOR = "\x06\x16"


def celery_queue_lists(queue: str, priority_steps: tuple[int, ...], prefix: str = "") -> list[str]:
    """The Redis lists holding ``queue``'s waiting messages (``prefix``: kombu's
    ``global_keyprefix`` transport option)."""
    return [
        f"{prefix}{queue}{CELERY_PRIORITY_SEPARATOR}{step}" if step else f"{prefix}{queue}"
        for step in sorted(set(priority_steps))
    ]


# The HTTP API: each key's request budget (GCRA, as the exchange limiter's), and the
# marker a request holds while it records a signal, so a second request with the same
# idempotency key is told to come back (409) instead of waiting on the first.
def api_rate_limit(key_name: str) -> str:
    return f"{PREFIX}api:ratelimit:{key_name}"


def api_rate_limit_cooldown(key_name: str) -> str:
    return f"{PREFIX}api:ratelimit:{key_name}:cooldown"


def api_recording(client_order_id: str) -> str:
    return f"{PREFIX}api:recording:{client_order_id}"


# The operator's console (/console in ``execq api``): the key that signs its cookies
# (made once, shared by every API process), each browser session and pending
# confirmation under the SHA-256 of its random id (a copy of Redis holds no cookie),
# the one-time notice a session sees after an action, and the prices it sampled
# for each aged episode's chart.
CONSOLE_SIGNING_KEY = PREFIX + "console:signing-key"


def console_session(session_hash: str) -> str:
    return f"{PREFIX}console:session:{session_hash}"


def console_confirmation(token_hash: str) -> str:
    return f"{PREFIX}console:confirmation:{token_hash}"


def console_notice(session_hash: str) -> str:
    return f"{PREFIX}console:notice:{session_hash}"


def console_aged_prices(aged_id: int) -> str:
    return f"{PREFIX}console:aged-prices:{aged_id}"


def console_login_budget(address: str) -> str:
    return f"{PREFIX}console:login-budget:{address}"


def console_login_cooldown(address: str) -> str:
    return f"{PREFIX}console:login-budget:{address}:cooldown"
