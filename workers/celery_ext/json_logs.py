"""``EXECQ_LOG_FORMAT=json`` for Celery's processes: every line a worker or beat
prints is one JSON object (``workers.observability.logs.JsonFormatter``).

Celery sets up its log handlers itself (stderr, its colour formatter, a task
formatter, stdout and warnings redirected to loggers); this keeps all of that
and swaps the formatters once they exist. The two start-up banners, which
Celery prints as free text before or beside logging, become one log record each.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import celery.apps.worker
from celery import VERSION_BANNER, signals
from celery.apps.beat import Beat
from celery.apps.worker import Worker
from celery.utils.log import get_multiprocessing_logger

from workers.observability.logs import JsonFormatter

logger = logging.getLogger("celery.banner")


def install(app: Any) -> None:
    """Give ``app``'s workers and beat JSON log lines (idempotent)."""
    signals.after_setup_logger.connect(
        _format_as_json, weak=False, dispatch_uid="execq.json_logs.root"
    )
    signals.after_setup_task_logger.connect(
        _format_as_json, weak=False, dispatch_uid="execq.json_logs.task"
    )
    app.Worker = app.subclass_with_self(JsonBannerWorker)
    app.Beat = app.subclass_with_self(JsonBannerBeat)


def _format_as_json(logger: logging.Logger | None = None, **_: Any) -> None:
    formatter = JsonFormatter()
    loggers = [logger or logging.getLogger(), get_multiprocessing_logger()]
    for each in loggers:
        for handler in getattr(each, "handlers", ()):
            handler.setFormatter(formatter)


class JsonBannerWorker(Worker):
    def on_before_init(self, **kwargs: Any) -> None:
        # Celery warns (running as root, say) before it sets up logging; until it
        # does, warnings go to stderr as JSON. Celery drops this handler when it
        # takes over the root logger.
        root = logging.getLogger()
        if not root.handlers:
            handler = logging.StreamHandler(sys.__stderr__)
            handler.setFormatter(JsonFormatter())
            root.addHandler(handler)
        logging.captureWarnings(True)
        super().on_before_init(**kwargs)

    def install_platform_tweaks(self, worker: Any) -> None:
        # The shutdown notices ("worker: Warm shutdown") come from signal handlers
        # through ``safe_say``.
        celery.apps.worker.safe_say = _say_as_json
        super().install_platform_tweaks(worker)

    def emit_banner(self) -> None:
        logger.info(
            "celery worker starting\n%s%s",
            self.startup_info(artlines=False),
            self.extra_info() or "",
        )


class JsonBannerBeat(Beat):
    _banner_as_record = False

    def run(self) -> None:
        # Beat prints its banner before it sets up logging; it is logged once logging is up.
        self._banner_as_record = not self.quiet
        self.quiet = True
        super().run()

    def install_sync_handler(self, service: Any) -> None:
        if self._banner_as_record:
            logger.info(
                "celery beat v%s is starting\n%s", VERSION_BANNER, self.startup_info(service)
            )
        super().install_sync_handler(service)


def _say_as_json(message: str, stream: TextIO | None = sys.__stderr__) -> None:
    """Celery's ``safe_say`` as one JSON line: it runs in signal handlers, so it
    writes with ``os.write`` and takes no lock (logging's could be held)."""
    if stream is None:
        return
    line = json.dumps(
        {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "WARNING",
            "logger": "celery.worker",
            "message": message,
        }
    )
    try:
        os.write(stream.fileno(), line.encode() + b"\n")
    except OSError:
        # A closed or full stream: the notice is lost, and the shutdown must go on.
        return
