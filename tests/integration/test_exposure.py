"""What execq opens on the network: Flower is a view that refuses every change and asks for
credentials, and a worker's metrics endpoint listens on loopback unless told otherwise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, ManagedProcess, free_port, wait_for

AUTH = ("ops", "flower-pw")


def listening_on(port: int) -> set[str]:
    """The addresses a socket listens on at ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, _remote, state = line.split()[1:4]
            address, port_hex = local.rsplit(":", 1)
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, words))
    return found


def start_flower(*options: str, env: dict[str, str] | None = None) -> tuple[ManagedProcess, int]:
    port = free_port()
    args = [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}"]
    return ManagedProcess("flower", [*args, *options], env=env or {}).start(), port


def wait_until_serving(flower: ManagedProcess, port: int, auth: tuple[str, str] | None) -> None:
    def serving() -> bool:
        if not flower.alive:
            raise AssertionError(f"flower exited:\n{flower.log_tail()}")
        try:
            return requests.get(f"http://127.0.0.1:{port}/tasks", auth=auth, timeout=1).ok
        except requests.ConnectionError:
            return False

    wait_for(serving, 60, interval_s=0.3, message=f"flower not serving:\n{flower.log_tail()}")


@pytest.fixture
def flower(worker) -> Iterator[tuple[str, str]]:
    """Flower with basic auth, once it lists the suite's worker; yields (base URL, worker name)."""
    process, port = start_flower("--address=127.0.0.1", f"--basic-auth={AUTH[0]}:{AUTH[1]}")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, port, AUTH)
        wait_for(
            lambda: worker.name in requests.get(f"{base}/api/workers", auth=AUTH, timeout=5).json(),
            60,
            interval_s=0.5,
            message=f"flower never saw the worker:\n{process.log_tail()}",
        )
        yield base, worker.name
    finally:
        process.stop()


def write_requests(worker_name: str) -> list[tuple[str, str, dict]]:
    order = {
        "kwargs": {
            "signal_id": f"flower-{uuid.uuid4().hex[:10]}",
            "exchange": "binance",
            "symbol": "BTC/USDT:USDT",
            "side": "buy",
            "amount": "0.01",
        }
    }
    task_id = str(uuid.uuid4())
    return [
        ("POST", "/api/task/apply/execute_market_order", order),
        ("POST", "/api/task/async-apply/execute_market_order", order),
        ("POST", "/api/task/send-task/execute_market_order", order),
        ("POST", "/api/task/async-apply/emergency_liquidate_all", {"kwargs": {"reason": "x"}}),
        ("POST", f"/api/task/abort/{task_id}", {}),
        ("POST", f"/api/task/revoke/{task_id}?terminate=true", {}),
        ("POST", "/api/task/timeout/execute_market_order", {"soft": 1, "hard": 2}),
        ("POST", "/api/task/rate-limit/execute_market_order", {"ratelimit": "1/h"}),
        ("POST", f"/api/worker/shutdown/{worker_name}", {}),
        ("POST", f"/api/worker/pool/restart/{worker_name}", {}),
        ("POST", f"/api/worker/pool/grow/{worker_name}?n=4", {}),
        ("POST", f"/api/worker/pool/shrink/{worker_name}?n=4", {}),
        ("POST", f"/api/worker/pool/autoscale/{worker_name}?min=1&max=2", {}),
        ("POST", f"/api/worker/queue/add-consumer/{worker_name}?queue=stolen", {}),
        ("POST", f"/api/worker/queue/cancel-consumer/{worker_name}?queue=celery", {}),
        ("PUT", "/api/task/async-apply/execute_market_order", order),
        ("DELETE", f"/api/worker/shutdown/{worker_name}", {}),
    ]


def test_flower_refuses_every_task_application_revocation_and_worker_control(flower, sim):
    from workers.app import app
    from workers.store.db import session_scope
    from workers.store.models import Order

    base, worker_name = flower
    # When an authenticated Flower user tries every endpoint that changes something
    for method, path, body in write_requests(worker_name):
        response = requests.request(method, f"{base}{path}", json=body, auth=AUTH, timeout=10)
        # Then each is refused
        assert response.status_code in (403, 405), (method, path, response.status_code)

    # and the worker is still up, still consuming its queue, with nothing run on its behalf
    assert app.send_task("ping", kwargs={"note": "after flower"}).get(timeout=30)
    with session_scope() as session:
        assert session.query(Order).count() == 0
    assert sim.ledger() == []
    # while everything Flower shows still answers
    for page in ("/api/workers", "/api/tasks", "/tasks", f"/worker/{worker_name}"):
        assert requests.get(f"{base}{page}", auth=AUTH, timeout=10).status_code == 200, page
    # and nobody without the credentials sees the tasks' arguments
    for page in ("/api/tasks", "/tasks", f"/task/{uuid.uuid4()}", f"/worker/{worker_name}"):
        assert requests.get(f"{base}{page}", timeout=10).status_code == 401, page


@pytest.mark.parametrize("basic_auth", [None, ""], ids=["unset", "empty"])
def test_flower_does_not_start_without_authentication(basic_auth: str | None):
    env = {name: value for name, value in os.environ.items() if name != "FLOWER_BASIC_AUTH"}
    if basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = basic_auth
    # When Flower is started without credentials (and without --insecure-local)
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={free_port()}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it exits at once with one line saying what to set
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("execq: Flower shows every order's arguments: set FLOWER_BASIC_AUTH")


def test_insecure_local_flower_listens_on_loopback_only():
    # When Flower is started without credentials but with --insecure-local
    flower, port = start_flower("--insecure-local")
    try:
        wait_until_serving(flower, port, auth=None)
        # Then it serves without credentials, on 127.0.0.1 and nowhere else
        assert listening_on(port) == {"127.0.0.1"}
        # and still refuses to change anything
        response = requests.post(f"http://127.0.0.1:{port}/api/task/async-apply/ping", timeout=5)
        assert response.status_code == 405
    finally:
        flower.stop()

    # and asked to listen on every interface as well, it does not start
    refused = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={free_port()}"]
        + ["--insecure-local", "--address=0.0.0.0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "127.0.0.1 only, not on 0.0.0.0" in refused.stderr


@pytest.mark.services
def test_a_workers_metrics_listen_on_loopback_unless_configured(workers, db, redis_clean):
    # Given one worker with the default metrics host, and one told to listen everywhere
    default_port, open_port = free_port(), free_port()
    loopback = workers.spawn(concurrency=2, env={"EXECQ_METRICS_PORT": str(default_port)})
    everywhere = workers.spawn(
        concurrency=2,
        env={"EXECQ_METRICS_PORT": str(open_port), "EXECQ_METRICS_HOST": "0.0.0.0"},
    )
    workers.wait_ready(loopback, everywhere)

    # Then the first listens on 127.0.0.1 only, the second on all interfaces
    wait_for(lambda: listening_on(default_port), 30, message="no metrics endpoint")
    assert listening_on(default_port) == {"127.0.0.1"}
    wait_for(lambda: listening_on(open_port), 30, message="no metrics endpoint")
    assert listening_on(open_port) == {"0.0.0.0"}
