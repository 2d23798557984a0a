"""The Prometheus endpoint shows what the helpers record, also across processes.

Every assertion reads /metrics over HTTP, as Prometheus would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, free_port, wait_for
from workers.harness.stack import Stack
from workers.observability import metrics

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Series:
    """All samples on ``127.0.0.1:port/metrics``, keyed by (sample name, labels)."""
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    response.raise_for_status()
    samples: Series = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Series, name: str, **labels: str) -> float:
    """The sample's value; 0 when the series is not exposed yet (as PromQL's ``or vector(0)``)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def endpoint() -> Iterator[int]:
    port = metrics.start_metrics_server(0, addr="127.0.0.1")
    yield port
    metrics.stop_metrics_server(port)


def test_helpers_change_the_exposed_series(endpoint: int) -> None:
    # The default registry is process-wide, so compare against what was there before.
    before = scrape(endpoint)

    metrics.observe_order_status("binance", "filled")
    metrics.observe_order_status("binance", "filled")
    metrics.observe_order_status("bybit", "rejected")
    metrics.observe_attempt("binance", "rate_limited")
    metrics.observe_verdict("bybit", "size_mismatch")
    metrics.set_aged_phase_counts({"grace": 2, "progressive": 1})
    metrics.observe_close_latency(1.5)
    with metrics.time_sweep("aged_phase_sweep"):
        pass
    metrics.add_rate_limit_wait("binance", 0.75)
    metrics.add_rate_limit_wait("binance", 0)
    metrics.observe_alert("possible_orphan", "critical")
    metrics.observe_exchange_request("bybit", "create_order")

    after = scrape(endpoint)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("execq_orders_total", exchange="binance", status="filled") == 2
    assert delta("execq_orders_total", exchange="bybit", status="rejected") == 1
    assert delta("execq_order_attempts_total", exchange="binance", retry_class="rate_limited") == 1
    assert delta("execq_verifications_total", exchange="bybit", verdict="size_mismatch") == 1
    assert value(after, "execq_aged_positions", phase="grace") == 2
    assert value(after, "execq_aged_positions", phase="progressive") == 1
    assert delta("execq_close_latency_seconds_count") == 1
    assert delta("execq_close_latency_seconds_bucket", le="2.0") == 1
    assert delta("execq_close_latency_seconds_bucket", le="1.0") == 0
    assert delta("execq_sweep_duration_seconds_count", sweep="aged_phase_sweep") == 1
    assert delta("execq_rate_limit_wait_seconds_total", exchange="binance") == pytest.approx(0.75)
    assert delta("execq_alerts_total", kind="possible_orphan", severity="critical") == 1
    assert delta("execq_exchange_requests_total", exchange="bybit", operation="create_order") == 1

    # A phase that empties drops to zero instead of keeping its last value.
    metrics.set_aged_phase_counts({"grace": 1})
    later = scrape(endpoint)
    assert value(later, "execq_aged_positions", phase="grace") == 1
    assert value(later, "execq_aged_positions", phase="progressive") == 0


def test_the_kill_switch_gauge_is_the_switch_when_scraped(endpoint: int, db, redis_clean) -> None:
    from workers.coordination import set_kill_switch

    # No process sets the gauge: each scrape reads the cluster's switch.
    set_kill_switch(True, "drill")
    assert value(scrape(endpoint), "execq_kill_switch") == 1
    set_kill_switch(False)
    assert value(scrape(endpoint), "execq_kill_switch") == 0


def test_order_status_enum_is_exposed_by_its_value(endpoint: int) -> None:
    from workers.execution.order_state import OrderStatus

    before = scrape(endpoint)
    metrics.observe_order_status("bybit", OrderStatus.PARTIALLY_FILLED)
    after = scrape(endpoint)
    name, labels = "execq_orders_total", {"exchange": "bybit", "status": "partially_filled"}
    assert value(after, name, **labels) - value(before, name, **labels) == 1


# --- multiprocess mode ----------------------------------------------------------------------

CHILD = """
import sys
from workers.observability import metrics

if sys.argv[1] == "server":
    port = metrics.start_metrics_server(0, addr="127.0.0.1")
    metrics.observe_order_status("binance", "filled")
    metrics.set_aged_phase_counts({"grace": 1})
    print(port, flush=True)
    sys.stdin.readline()  # serve until the test says stop
else:
    metrics.observe_order_status("binance", "filled")
    metrics.observe_order_status("binance", "filled")
    metrics.set_aged_phase_counts({"grace": 3})
    metrics.observe_close_latency(0.4)
"""


def test_multiprocess_dir_aggregates_two_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "-c", CHILD, "server"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        port = int(server.stdout.readline())
        writer = subprocess.run(
            [sys.executable, "-c", CHILD, "writer"], cwd=ROOT, env=env, check=True
        )
        assert writer.returncode == 0

        # One endpoint shows the sum of both processes' counters and the latest gauges.
        samples = scrape(port)
        assert value(samples, "execq_orders_total", exchange="binance", status="filled") == 3
        assert value(samples, "execq_aged_positions", phase="grace") == 3, "the latest write wins"
        assert value(samples, "execq_close_latency_seconds_count") == 1

        # A process caught between creating its metric file and sizing it (what a
        # scrape racing a first increment sees) leaves the scrape whole.
        (tmp_path / "counter_4242424.db").touch()
        assert scrape(port) == samples

        # When the worker hook marks the writer's process dead, its gauges go
        # (the server's own aged count shows again) but its counts stay.
        writer_pids = {
            int(path.stem.rsplit("_", 1)[1]) for path in tmp_path.glob("gauge_livemostrecent_*.db")
        } - {server.pid}
        assert len(writer_pids) == 1
        monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
        metrics._on_process_shutdown(pid=writer_pids.pop())

        samples = scrape(port)
        assert value(samples, "execq_aged_positions", phase="grace") == 1
        assert value(samples, "execq_orders_total", exchange="binance", status="filled") == 3
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=10)


# --- the Celery hook in a real worker ---------------------------------------------------------

STANDIN_METRICS_APP = """
import os
from celery import Celery
from workers.observability.metrics import install_worker_hooks, observe_order_status

app = Celery("standin_metrics", broker=os.environ["REDIS_URL"])
app.conf.update(worker_hijack_root_logger=False)
install_worker_hooks(app)


@app.task(name="standin_metrics.fill")
def fill(exchange):
    observe_order_status(exchange, "filled")
"""


def test_worker_hook_serves_metrics_on_the_configured_port(
    tmp_path: Path, redis_server: str, workers
) -> None:
    # ``workers`` stops the session's shared worker: it would take the stand-in's tasks.
    (tmp_path / "standin_metrics.py").write_text(STANDIN_METRICS_APP)
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    port = free_port()
    env = {
        "REDIS_URL": redis_server,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "EXECQ_METRICS_PORT": str(port),
        metrics.MULTIPROC_ENV: str(multiproc),
    }
    with Stack(env, tmp_path / "run", celery_app="standin_metrics") as stack:
        stack.control_app().control.purge()
        stack.start_worker("metrics-probe", concurrency=2)

        def endpoint_up() -> bool:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
            except requests.ConnectionError:
                return False
            return response.ok and "execq_close_latency_seconds" in response.text

        wait_for(
            endpoint_up, 30, message=f"no /metrics on :{port}\n{stack.log_tail('metrics-probe')}"
        )

        stack.control_app().send_task("standin_metrics.fill", args=["bybit"])
        stack.control_app().send_task("standin_metrics.fill", args=["bybit"])
        wait_for(
            lambda: (
                value(scrape(port), "execq_orders_total", exchange="bybit", status="filled") == 2
            ),
            30,
            message="the worker's task increments were not exposed",
        )
        worker = stack.worker("metrics-probe")

    # A clean shutdown marks the worker dead: its live gauge files are gone.
    assert not worker.alive
    assert not list(multiproc.glob(f"gauge_livemostrecent_{worker.pid}.db"))
