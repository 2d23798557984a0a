"""Task events (what Flower shows) reach a receiver in batches, the last ones too."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from workers.app import app

WORKER_TASK_EVENTS = ("task-received", "task-started", "task-succeeded")


class CountingReceiver:
    """Celery's event receiver on the test broker, counting events and the worker's
    messages carrying them (a producer's ``task-sent`` events go one per message)."""

    def __init__(self) -> None:
        self.events: Counter[tuple[str, str]] = Counter()
        self.messages = 0
        self.lock = threading.Lock()
        self.connection = app.connection_for_read()
        self.receiver = app.events.Receiver(
            self.connection, handlers={"*": self._on_event}, app=app
        )
        counted = self.receiver._receive

        def receive(body: Any, message: Any) -> None:
            events = body if isinstance(body, list) else [body]
            if any(event.get("type") in WORKER_TASK_EVENTS for event in events):
                with self.lock:
                    self.messages += 1
            counted(body, message)

        self.receiver._receive = receive
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        if "uuid" in event:
            with self.lock:
                self.events[(event["type"], event["uuid"])] += 1

    def _run(self) -> None:
        self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def seen(self, event_type: str, task_ids: list[str]) -> bool:
        with self.lock:
            return all(self.events[(event_type, task_id)] for task_id in task_ids)

    def stop(self) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=10)
        self.connection.release()


@pytest.fixture
def receiver(redis_clean: None) -> Iterator[CountingReceiver]:
    counting = CountingReceiver()
    counting.thread.start()
    yield counting
    counting.stop()


def test_a_burst_of_tasks_sends_every_event_in_few_messages(workers, receiver) -> None:
    workers.start(concurrency=4, env={"EXECQ_HARNESS_TASKS": "true"})

    # The receiver's fanout subscription is live once it sees a task of ours.
    probes: list[str] = []

    def subscribed() -> bool:
        probes.append(app.send_task("noop").id)
        return any(receiver.seen("task-succeeded", [task_id]) for task_id in probes)

    wait_for(subscribed, 30, interval_s=0.2, message="no task events reached the receiver")
    messages_before = receiver.messages

    results = [app.send_task("noop") for _ in range(60)]
    for result in results:
        result.get(timeout=30)
    task_ids = [result.id for result in results]

    # Nothing follows the burst: its last events go out on the flush timer alone.
    for event_type in WORKER_TASK_EVENTS:
        wait_for(
            lambda event_type=event_type: receiver.seen(event_type, task_ids),
            10,
            interval_s=0.05,
            message=f"not every {event_type} event arrived",
        )
    with receiver.lock:
        messages = receiver.messages - messages_before
    # 180 events; flushed on every turn of the worker's loop they took over 100 messages.
    assert messages <= 45, f"{messages} messages for 180 task events"
