"""The operator's console: ``/console`` in ``execq api``.

Server-rendered pages (Jinja2, autoescaped) of what an operator of money watches:
accounts with the kill switch, stream health and rate-limit headroom; open
positions with mark and unrealised PnL; aged episodes by phase with their distance
to target and a chart of price against target; orders in flight, resting and
``unknown``; the last alerts; an event log for one signal, order, position or
episode. Its actions (kill switch, cancel an order, liquidate everything) need the
``operate`` scope and a confirmation, and are events naming the key.

A browser logs in with an API key (``sessions``); pages refresh themselves by
asking again every ``console_refresh_s`` (``static/console.js``, no build step).
Templates and static files ship in the package.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from workers.api.console.actions import Confirmations
from workers.api.console.pages import PACKAGE, STATIC_PATH, Pages
from workers.api.console.routes import Console, router
from workers.api.console.sessions import Sessions
from workers.settings import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the console on ``app`` (its key ring is ``app.state.context.keys``)."""
    from workers.redis_client import get_redis

    client = get_redis()
    app.state.console = Console(
        settings=settings,
        sessions=Sessions(client, app.state.context.keys, settings.console_session_ttl_s),
        confirmations=Confirmations(client),
        pages=Pages(settings.console_refresh_s),
    )
    app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(packages=[(PACKAGE, "static")]), name="console-static")
