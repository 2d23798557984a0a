"""Flower lists execq tasks with the producer's JSON arguments; a worker's /metrics shows the run."""

from __future__ import annotations

import sys
import uuid

import requests

from tests.conftest import ManagedProcess, free_port, wait_for

ETH = "ETH/USDT:USDT"


def test_flower_and_worker_metrics_show_a_real_order(workers, db, redis_clean, sim, tmp_path):
    metrics_port, flower_port = free_port(), free_port()
    workers.start(concurrency=4, env={"EXECQ_METRICS_PORT": str(metrics_port)})
    flower = ManagedProcess(
        "flower",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "flower",
            f"--port={flower_port}",
            "--address=127.0.0.1",
            "--basic-auth=ops:secret-pw",
        ],
    ).start()
    auth = ("ops", "secret-pw")
    try:

        def flower_up() -> bool:
            try:
                return requests.get(
                    f"http://127.0.0.1:{flower_port}/api/workers", auth=auth, timeout=1
                ).ok
            except requests.ConnectionError:
                return False

        wait_for(flower_up, 60, interval_s=0.3, message=f"flower down:\n{flower.log_tail()}")
        # Basic auth is enforced
        assert (
            requests.get(f"http://127.0.0.1:{flower_port}/api/tasks", timeout=5).status_code == 401
        )

        from workers.app import app
        from workers.producer import submit_market_order

        def tasks_named(name: str) -> list[dict]:
            tasks = requests.get(
                f"http://127.0.0.1:{flower_port}/api/tasks", auth=auth, timeout=5
            ).json()
            return [
                t for t in tasks.values() if t.get("name") == name and t.get("state") == "SUCCESS"
            ]

        # Flower's API answers before its event receiver runs: wait until events flow.
        def events_flow() -> list[dict]:
            app.send_task("ping", kwargs={"note": "flower"}).get(timeout=30)
            return tasks_named("ping")

        wait_for(events_flow, 60, interval_s=0.5, message="flower never saw a task event")

        signal_id = f"flower-{uuid.uuid4().hex[:10]}"
        summary = submit_market_order(signal_id, "binance", ETH, "buy", "0.1").get(timeout=60)
        assert summary["status"] == "filled"

        shown = wait_for(
            lambda: tasks_named("execute_market_order"),
            30,
            interval_s=0.3,
            message="flower did not list the order task",
        )
        # The arguments Flower shows are the JSON the producer sent, and carry no secrets
        assert signal_id in shown[0]["kwargs"]
        assert "sim-secret" not in shown[0]["kwargs"] and "api_key" not in shown[0]["kwargs"]

        def series() -> str | None:
            text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            return (
                text
                if 'execq_verifications_total{exchange="binance",verdict="verified"}' in text
                else None
            )

        text = wait_for(series, 30, interval_s=0.3, message="no verification in /metrics")
        for line in (
            'execq_orders_total{exchange="binance",status="filled"} 1.0',
            'execq_order_attempts_total{exchange="binance",retry_class="success"} 1.0',
            'execq_verifications_total{exchange="binance",verdict="verified"} 1.0',
        ):
            assert line in text, line
        assert "execq_exchange_requests_total" in text
    finally:
        flower.stop()
