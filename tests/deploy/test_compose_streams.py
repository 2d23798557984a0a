"""compose.yaml's stream holder, read as Compose would (no Docker engine needed): it runs
``execq streams`` with what reading the exchanges' streams into the book takes, and the
simulator serves the streams where the holder looks for them."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


def test_the_stream_holder_gets_what_the_worker_trades_with_and_no_port(services):
    streams, worker = services["streams"], services["worker"]
    assert streams["command"] == ["execq", "streams"]
    assert streams["image"] == worker["image"]
    # Given the worker's accounts, Postgres and TLS Redis (fills are booked, closes sent)
    for name in (
        "EXECQ_ACCOUNTS",
        "DATABASE_URL",
        "EXECQ_DATABASE_PASSWORD_FILE",
        "REDIS_URL",
        "EXECQ_REDIS_PASSWORD_FILE",
        "EXECQ_REDIS_TLS_CA_FILE",
        "EXECQ_SIM_URL",
    ):
        assert streams["environment"][name] == worker["environment"][name], name
    assert set(streams["secrets"]) == set(worker["secrets"])
    # but nothing reaches it from outside, and it waits for the schema
    assert "ports" not in streams
    assert streams["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_simulator_serves_the_streams_where_sim_accounts_look(services):
    simulator = services["exchange-sim"]
    command = simulator["command"]
    ws_port = command[command.index("--ws-port") + 1]
    # Published on the host's loopback only, like its REST port
    assert f"127.0.0.1:{ws_port}:{ws_port}" in simulator["ports"]
    using = {
        name
        for name, service in services.items()
        if "EXECQ_SIM_WS_URL" in (service.get("environment") or {})
    }
    # Only the process that opens the streams is told where they are
    assert using == {"streams"}
    assert services["streams"]["environment"]["EXECQ_SIM_WS_URL"] == f"ws://exchange-sim:{ws_port}"
