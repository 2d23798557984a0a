"""The cluster gauges a worker's /metrics reads from Postgres and Redis at scrape time.

The alert rules in deploy/prometheus/rules watch these series; every assertion reads
/metrics over HTTP, as Prometheus would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis
import requests
from sqlalchemy import create_engine, event, text

from tests.conftest import ManagedProcess, free_port, stored_aged_episode, stored_order, wait_for
from tests.integration.test_metrics import scrape, value
from workers import redis_keys
from workers.observability import metrics
from workers.observability.cluster import (
    ClusterStateCollector,
    forget_stream,
    record_stream_alive,
)
from workers.store.models import Position

STATE_GAUGES = ("execq_orders_in_state", "execq_aged_positions_unclosable")
REDIS_GAUGES = ("execq_queue_length", "execq_rate_limit_cooldown_seconds")


@pytest.fixture
def serve() -> Iterator:
    """``serve(collector)``: an endpoint of this process with ``collector``; its port."""
    ports: list[int] = []

    def start(collector: ClusterStateCollector) -> int:
        port = metrics.start_metrics_server(0, "127.0.0.1", collector)
        ports.append(port)
        return port

    yield start
    for port in ports:
        metrics.stop_metrics_server(port)


def store_position(session, symbol: str, status: str = "open") -> int:
    position = Position(
        account="binance",
        symbol=symbol,
        side="long",
        size=Decimal("0.01"),
        entry_price=Decimal("50000"),
        status=status,
        opened_at=datetime.now(UTC) - timedelta(hours=5),
    )
    session.add(position)
    session.flush()
    return position.id


def test_endpoint_shows_orders_in_doubt_aged_positions_cooldowns_backlog_and_streams(
    workers, db, redis_clean, serve
) -> None:
    # ``workers`` stops the session's worker: the queued tasks below stay queued.
    from workers.app import app
    from workers.exchange.ratelimit import set_cooldown
    from workers.redis_client import get_redis
    from workers.store.db import session_scope

    now = datetime.now(UTC)
    # Given orders in doubt, resting and finished
    with session_scope() as session:
        session.add(stored_order("u-old", "unknown", created_at=now - timedelta(minutes=10)))
        session.add(stored_order("u-new", "unknown"))
        session.add(stored_order("s-1", "submitting"))
        session.add(stored_order("o-1", "open", created_at=now - timedelta(hours=2)))
        session.add(stored_order("f-1", "filled", created_at=now - timedelta(days=1)))
        # and aged positions: one unclosable, one whose closes failed 3 times (the alert
        # threshold), one that failed once, and an unclosable one closed by hand since
        unclosable = store_position(session, "BTC/USDT:USDT")
        session.add(stored_aged_episode(unclosable, "unclosable"))
        failing = store_position(session, "ETH/USDT:USDT")
        session.add(stored_aged_episode(failing, "active", consecutive_failures=3))
        once = store_position(session, "SOL/USDT:USDT")
        session.add(stored_aged_episode(once, "active", consecutive_failures=1))
        gone = store_position(session, "XRP/USDT:USDT", status="closed_externally")
        session.add(stored_aged_episode(gone, "unclosable"))
    # and a cooldown on binance after a 429, four tasks waiting (one with a priority),
    # a live stream, a stream quiet for 5 minutes and one of an account no longer configured
    set_cooldown("binance", 30)
    for _ in range(3):
        app.send_task("ping")
    app.send_task("ping", priority=5)
    record_stream_alive("binance", "orders")
    client = get_redis()
    client.hset(redis_keys.STREAMS_LAST_ALIVE, "bybit:tickers", time.time() - 300)
    client.hset(redis_keys.STREAMS_LAST_ALIVE, "retired:orders", time.time() - 3000)

    # When Prometheus scrapes
    port = serve(ClusterStateCollector(fresh_s=0))
    samples = scrape(port)

    # Then it sees the orders in doubt and how long the oldest has been waiting
    assert value(samples, "execq_orders_in_state", status="unknown") == 2
    assert value(samples, "execq_orders_in_state", status="submitting") == 1
    assert value(samples, "execq_orders_in_state", status="open") == 1
    assert ("execq_orders_in_state", frozenset({("status", "filled")})) not in samples
    assert ("execq_orders_in_state", frozenset({("status", "intent")})) in samples
    assert value(samples, "execq_orders_in_state", status="intent") == 0
    oldest_unknown = value(samples, "execq_oldest_order_age_seconds", status="unknown")
    assert 600 <= oldest_unknown < 3600
    assert value(samples, "execq_oldest_order_age_seconds", status="open") >= 7200
    # the aged positions that need a person
    assert value(samples, "execq_aged_positions_unclosable") == 1
    assert value(samples, "execq_aged_positions_close_failing") == 1
    # the cooldown left on binance, none on bybit
    assert 0 < value(samples, "execq_rate_limit_cooldown_seconds", exchange="binance") <= 30
    assert ("execq_rate_limit_cooldown_seconds", frozenset({("exchange", "bybit")})) in samples
    assert value(samples, "execq_rate_limit_cooldown_seconds", exchange="bybit") == 0
    # the backlog across the queue's priority lists
    assert value(samples, "execq_queue_length", queue="celery") == 4
    # and the age of each configured account's streams
    assert value(samples, "execq_stream_age_seconds", account="binance", stream="orders") < 60
    assert value(samples, "execq_stream_age_seconds", account="bybit", stream="tickers") >= 300
    assert not [labels for name, labels in samples if ("account", "retired") in labels]
    assert value(samples, "execq_collector_errors_total", source="postgres") == 0
    assert value(samples, "execq_collector_errors_total", source="redis") == 0

    # And a stream its holder closed on purpose is no longer reported
    forget_stream("bybit", "tickers")
    streams = {labels for name, labels in scrape(port) if name == "execq_stream_age_seconds"}
    assert streams == {frozenset({("account", "binance"), ("stream", "orders")})}


def test_scrapes_within_fresh_s_share_one_read(db, serve) -> None:
    from workers.store.db import session_scope

    # Given an endpoint whose collector reads Postgres through an engine we can watch
    engine = create_engine(os.environ["DATABASE_URL"], connect_args={"connect_timeout": 5})
    reads: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if "FROM orders" in statement:
            reads.append(statement)

    port = serve(ClusterStateCollector(engine=engine, fresh_s=60))
    with session_scope() as session:
        session.add(stored_order("u-1", "unknown"))

    # When Prometheus scrapes twice, an order arriving in between
    first = scrape(port)
    with session_scope() as session:
        session.add(stored_order("u-2", "unknown"))
    second = scrape(port)

    # Then both scrapes were answered from one query, and show the same count
    assert len(reads) == 1
    assert value(first, "execq_orders_in_state", status="unknown") == 1
    assert value(second, "execq_orders_in_state", status="unknown") == 1
    engine.dispose()


def test_scrape_answers_when_postgres_and_redis_are_unreachable(serve) -> None:
    # Given a collector whose Postgres and Redis refuse connections
    dead_postgres, dead_redis = free_port(), free_port()
    engine = create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{dead_postgres}/execq",
        connect_args={"connect_timeout": 2},
    )
    client = redis.Redis(port=dead_redis, socket_connect_timeout=2, socket_timeout=2)
    port = serve(ClusterStateCollector(engine=engine, redis_client=client, fresh_s=0))

    # When Prometheus scrapes, as often as it likes
    first = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)

    # Then every scrape is answered with the process's own series and without the
    # cluster gauges (no zeros that would look like "nothing in doubt"), and each
    # failed read is counted per source
    assert first.status_code == 200
    assert "# TYPE execq_orders_total counter" in first.text

    def both_counted() -> bool:
        samples = scrape(port)
        assert not {name for name, _labels in samples} & {*STATE_GAUGES, *REDIS_GAUGES}
        return all(
            value(samples, "execq_collector_errors_total", source=source) >= 1
            for source in ("postgres", "redis")
        )

    wait_for(both_counted, 30, interval_s=0.5, message="failed reads were not counted")
    engine.dispose()


def test_a_database_that_does_not_answer_does_not_hold_the_scrape(db, redis_clean, serve) -> None:
    from workers.store.db import get_engine, session_scope

    port = serve(ClusterStateCollector(fresh_s=0, wait_s=0.2))

    def unknown_orders() -> float | None:
        samples = scrape(port)
        if ("execq_orders_in_state", frozenset({("status", "unknown")})) not in samples:
            return None
        return value(samples, "execq_orders_in_state", status="unknown")

    # Given an endpoint that has read the orders once (none in doubt), then an order
    # in doubt, and Postgres blocking the next read (a lock on the orders table)
    wait_for(lambda: unknown_orders() == 0, 30, interval_s=0.3, message="no first read")
    with session_scope() as session:
        session.add(stored_order("u-locked", "unknown"))
    blocker = get_engine().connect()
    try:
        blocker.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))

        # When Prometheus scrapes
        samples = scrape(port)

        # Then it is answered while the read waits, with the values read before (the
        # read has neither returned the new order nor failed on its statement timeout)
        assert value(samples, "execq_orders_in_state", status="unknown") == 0
        assert value(samples, "execq_collector_errors_total", source="postgres") == 0
    finally:
        blocker.rollback()
        blocker.close()

    # And once the lock is gone the next reads see the order
    wait_for(
        lambda: unknown_orders() == 1,
        30,
        interval_s=0.3,
        message="the order in doubt never showed after the lock was released",
    )


def test_a_worker_serves_the_cluster_gauges_and_every_alert_kind_from_its_start(
    workers, db, redis_clean
) -> None:
    from workers.store.db import session_scope

    # Given an order in doubt and a worker with its metrics endpoint on
    with session_scope() as session:
        session.add(stored_order("u-worker", "unknown"))
    port = free_port()
    worker: ManagedProcess = workers.start(concurrency=2, env={"EXECQ_METRICS_PORT": str(port)})

    def served() -> dict | None:
        try:
            samples = scrape(port)
        except requests.ConnectionError:
            return None
        return samples if "execq_orders_in_state" in {n for n, _ in samples} else None

    # When Prometheus scrapes it
    samples = wait_for(served, 30, interval_s=0.3, message=f"no /metrics\n{worker.log_tail()}")

    # Then it shows the order in doubt, the broker's backlog,
    assert value(samples, "execq_orders_in_state", status="unknown") == 1
    assert ("execq_queue_length", frozenset({("queue", "celery")})) in samples
    # and every alert kind at 0 before any was raised, so that the first one raised
    # is an increase Prometheus can see
    for kind, severity in metrics.ALERT_KINDS.items():
        labels = frozenset({("kind", kind), ("severity", severity)})
        assert samples.get(("execq_alerts_total", labels)) == 0, kind
