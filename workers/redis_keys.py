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
