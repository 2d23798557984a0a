"""``execq api``: the ASGI app on uvicorn, with execq's logging."""

from __future__ import annotations

import logging
import sys

import uvicorn

from workers.settings import get_settings

APP_FACTORY = "workers.api.app:create_app"


def configure_logging() -> None:
    """execq's log lines (``EXECQ_LOG_FORMAT``) on stderr, uvicorn's with them; uvicorn's
    own access log is off: it would log query strings, and ``workers.api.app.AccessLog``
    logs each request without them."""
    from workers.observability.logs import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    if get_settings().log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def serve(host: str, port: int, workers: int = 1) -> None:
    """Serve the API until SIGTERM or Ctrl-C (uvicorn's graceful shutdown)."""
    configure_logging()
    # Build the app once here: a settings or key problem is one line and exit 2
    # before the server binds its port.
    from workers.api.app import create_app

    app = create_app()
    uvicorn.run(
        # Several worker processes each build their own app (and connections) after the fork.
        app if workers == 1 else APP_FACTORY,
        factory=workers > 1,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
    )
