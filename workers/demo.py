"""``execq demo`` (foundation form): migrate, start a worker, round-trip a task, print its event."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import click


def run_demo(keep_running: bool = False, as_json: bool = False) -> int:
    from workers.app import app
    from workers.cli import run_migrations
    from workers.store.db import session_scope
    from workers.store.models import Event

    run_migrations()
    click.echo("database migrated")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "-P",
            "threads",
            "-c",
            "4",
            "-n",
            f"demo-{os.getpid()}@localhost",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
        ],
        start_new_session=True,
    )
    try:
        result = app.send_task("ping", kwargs={"note": "demo round-trip"})
        body = result.get(timeout=60)
        with session_scope() as session:
            event = session.get(Event, body["event_id"])
            click.echo(
                f"round-trip ok: event #{event.id} type={event.type} at {event.occurred_at:%H:%M:%S} "
                f"from {body['worker']}"
            )
        return 0
    finally:
        if not keep_running:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
