"""The worker's Celery consumer: task events (Flower's) go out in batches on a timer.

Celery already buffers task events and publishes each buffer as one
``task.multi`` message, but it flushes on every turn of the worker's event
loop: under load that is one PUBLISH (kombu's whole publish path, about
0.2 ms of CPU with the GIL held) for every one or two events, three events
per task. Flushing at most every ``EVENT_FLUSH_INTERVAL_S`` turns that into
one publish per few dozen events. Flower shows a task's events up to that
much later; Celery still flushes at once when a buffer reaches its limit and
when the worker shuts down.
"""

from __future__ import annotations

import time

from celery.worker.consumer import Consumer as CeleryConsumer

EVENT_FLUSH_INTERVAL_S = 0.1


class Consumer(CeleryConsumer):
    _last_event_flush = 0.0
    _event_flush_timer_set = False

    def _flush_events(self) -> None:
        """Flush now if the last flush is an interval old, else once when it will be.

        Runs on the event loop (the hub's ready queue and timer), never in a pool thread.
        """
        now = time.monotonic()
        due = self._last_event_flush + EVENT_FLUSH_INTERVAL_S
        if now < due and self.hub is not None:
            if not self._event_flush_timer_set:
                self._event_flush_timer_set = True
                self.hub.call_later(due - now, self._flush_events_due)
            return
        self._last_event_flush = now
        super()._flush_events()

    def _flush_events_due(self) -> None:
        self._event_flush_timer_set = False
        self._flush_events()
