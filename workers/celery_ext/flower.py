"""Flower as a view: ``celery -A workers flower`` shows tasks and workers and changes nothing.

Flower's API can run any task by name (``/api/task/async-apply/...``: an order
placed past the outbox, or ``emergency_liquidate_all``), revoke tasks and shut
workers down. execq's Flower refuses every request that is not a GET or HEAD
with 405, before Flower's own handlers (and their authentication) see it, and
turns on Flower's ``read_only`` mode, which hides the UI's buttons and answers
403 in each write handler too.

It also refuses to start without authentication (``FLOWER_BASIC_AUTH`` /
``--basic-auth``, or ``--auth`` with OAuth), since its pages show every order's
arguments and tracebacks. ``--insecure-local`` (``FLOWER_INSECURE_LOCAL=1``)
starts it without, on 127.0.0.1 only.

The guard is installed by ``workers.app`` when it is loaded by ``celery ...
flower``: Celery's command line imports Flower's command (a plugin) before it
loads the app named by ``-A``, so the Flower class the command is about to
build is replaced here by its guarded subclass.
"""

from __future__ import annotations

import sys
from typing import Any

READ_METHODS = frozenset({"GET", "HEAD"})
LOOPBACK = "127.0.0.1"
EXIT_USAGE = 2

NEEDS_AUTH = (
    "execq: Flower shows every order's arguments: set FLOWER_BASIC_AUTH=user:password "
    "(or --basic-auth=user:password, or --auth with OAuth); --insecure-local serves it "
    "without authentication on 127.0.0.1 only"
)


def install() -> None:
    """Guard the Flower that ``celery ... flower`` is about to start (idempotent).

    A no-op in a process where Flower's command was never imported.
    """
    command = sys.modules.get("flower.command")
    if command is None or getattr(command.Flower, "execq_guarded", False):
        return
    from tornado.options import define, options

    if "insecure_local" not in options:
        define(
            "insecure_local",
            type=bool,
            default=False,
            help="execq: serve without authentication, on 127.0.0.1 only",
        )
    command.Flower = guarded(command.Flower)


def guarded(flower_class: type) -> type:
    """``flower_class`` made read-only and refusing to start without authentication."""
    import tornado.web

    class MethodRefused(tornado.web.RequestHandler):
        """Every request that could change something: 405, whatever the path."""

        def check_xsrf_cookie(self) -> None:
            # Refused whatever it carries: no token makes it a 403 instead of a 405.
            return

        def prepare(self) -> None:
            raise tornado.web.HTTPError(405)

        def write_error(self, status_code: int, **kwargs: Any) -> None:
            self.set_header("Allow", ", ".join(sorted(READ_METHODS)))
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish("execq's Flower is read-only: use execq's commands to act\n")

    class ExecqFlower(flower_class):  # type: ignore[misc,valid-type]
        execq_guarded = True

        def __init__(self, options: Any = None, **kwargs: Any) -> None:
            if options is not None:
                require_auth_or_local(options)
                options.read_only = True
            super().__init__(options=options, **kwargs)

        def find_handler(self, request: Any, **kwargs: Any) -> Any:
            if request.method not in READ_METHODS:
                return self.get_handler_delegate(request, MethodRefused)
            return super().find_handler(request, **kwargs)

    ExecqFlower.__name__ = ExecqFlower.__qualname__ = f"Execq{flower_class.__name__}"
    return ExecqFlower


def require_auth_or_local(options: Any) -> None:
    """Exit (code 2, one line) when Flower would serve without authentication
    anywhere but 127.0.0.1; pin ``--insecure-local`` to 127.0.0.1."""
    # FLOWER_BASIC_AUTH set but empty parses as [""]: no credential anyone can give.
    if any(options.basic_auth or ()) or options.auth:
        return
    if not options.insecure_local:
        _refuse(NEEDS_AUTH)
    if options.unix_socket:
        _refuse("execq: --insecure-local serves on 127.0.0.1 only, not on a unix socket")
    if options.address not in ("", LOOPBACK, "localhost"):
        _refuse(f"execq: --insecure-local serves on 127.0.0.1 only, not on {options.address}")
    options.address = LOOPBACK


def _refuse(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(EXIT_USAGE)
