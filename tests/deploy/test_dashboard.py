"""The Grafana dashboard, the rules and the monitoring profile fit what execq really serves.

Every series a dashboard panel or an alert rule selects must be one that a real
worker's /metrics or Flower's /metrics exposes (or one Prometheus makes itself),
so a renamed metric breaks this test instead of silently emptying a panel or
disarming an alert.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, ManagedProcess, WorkerPool, free_port, reset_broker, wait_for
from tests.deploy.promql import metric_names, without_grafana_variables
from tests.deploy.test_alert_rules import PROMETHEUS_DIR, alert_rules, promtool

GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "execq.json"
# Series Prometheus writes itself: scrape health and the state of alerting rules.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}


def exposed_series(text: str) -> set[str]:
    """The sample names an exposition declares, whether or not a sample exists yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = SAMPLE_SUFFIXES.get(family.type, ("",))
        names.update(f"{family.name}{suffix}" for suffix in suffixes)
        names.update(sample.name for sample in family.samples)
    return names


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", ())
    ]


def rule_queries() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for rule in alert_rules()]


@pytest.fixture(scope="module")
def served_series(shared_worker: WorkerPool) -> Iterator[set[str]]:
    """What a real worker's /metrics and a real Flower's /metrics declare."""
    # The session's shared worker would answer the control pings meant for this one.
    shared_worker.stop_all()
    reset_broker()
    pool = WorkerPool(shared_worker.stack)
    metrics_port, flower_port = free_port(), free_port()
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
    )
    try:
        worker = pool.start(concurrency=2, env={"EXECQ_METRICS_PORT": str(metrics_port)})
        flower.start()

        def text_of(port: int, process: ManagedProcess) -> str | None:
            if not process.alive:
                raise AssertionError(f"{process.name} exited:\n{process.log_tail()}")
            try:
                # No credentials: Prometheus scrapes Flower's /metrics without them
                # even when its UI and API need a login (compose.yaml sets one).
                response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            except requests.ConnectionError:
                return None
            return response.text if response.ok else None

        worker_text = wait_for(
            lambda: (
                (text := text_of(metrics_port, worker)) and "execq_queue_length" in text and text
            ),
            30,
            interval_s=0.3,
            message=f"no worker /metrics\n{worker.log_tail()}",
        )
        flower_text = wait_for(
            lambda: (
                (text := text_of(flower_port, flower)) and "flower_events_total" in text and text
            ),
            60,
            interval_s=0.3,
            message=f"no Flower /metrics\n{flower.log_tail()}",
        )
        yield exposed_series(worker_text) | exposed_series(flower_text)
    finally:
        flower.stop()
        pool.stop_all()
        reset_broker()


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_query_selects_series_execq_or_flower_serves(
    source: str, served_series: set[str]
) -> None:
    queries = dashboard_queries() if source == "dashboard" else rule_queries()
    assert queries
    known = served_series | PROMETHEUS_SERIES
    for title, expr in queries:
        selected = metric_names(expr)
        assert selected, f"{title}: selects no metric: {expr}"
        assert selected <= known, f"{title}: not served: {sorted(selected - known)}"


def test_every_job_a_query_names_is_scraped() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    for title, expr in dashboard_queries() + rule_queries():
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs, f"{title}: job {job} is not in prometheus.yml"


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # Given every query of the dashboard as a recording rule, with Grafana's variables
    # replaced as Grafana does before it sends a query
    rules = [
        {"record": f"dashboard:query_{number}", "expr": without_grafana_variables(expr)}
        for number, (_title, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    # When promtool parses them
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )

    # Then all parse
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_is_provisionable() -> None:
    board = dashboard()
    assert board["uid"] == "execq-overview"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        # Every query goes to the Prometheus chosen in the dashboard's variable, so the
        # JSON works in the provisioned Grafana and imported into another one.
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_monitoring_profile_mounts_what_deploy_holds() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]

    # The two services start only with the profile
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    assert "prometheus-data" in compose["volumes"]

    # Every file they mount exists here
    mounts = {
        target: source
        for name in ("prometheus", "grafana")
        for source, target, *_mode in (volume.split(":") for volume in services[name]["volumes"])
    }
    for source in mounts.values():
        if source.startswith("./"):
            assert (ROOT / source).is_dir(), source

    # Prometheus reads the config and rules of deploy/prometheus
    assert mounts["/etc/prometheus"] == "./deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    # Grafana's provider loads the dashboards from where compose mounts them, and its
    # datasource is the prometheus service
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/execq.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert mounts[dashboards_path] == "./deploy/grafana/dashboards"
    for kind in ("datasources", "dashboards"):
        target = f"/etc/grafana/provisioning/{kind}"
        assert mounts[target] == f"./deploy/grafana/provisioning/{kind}"
    datasource = yaml.safe_load(
        (GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"

    # Prometheus scrapes the worker service on the port the image's workers serve
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    workers_job = next(j for j in config["scrape_configs"] if j["job_name"] == "execq-workers")
    discovery = workers_job["dns_sd_configs"][0]
    assert discovery["names"] == ["worker"] and "worker" in services
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ENV EXECQ_METRICS_PORT={discovery['port']}" in dockerfile
