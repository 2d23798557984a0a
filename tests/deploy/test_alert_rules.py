"""The Prometheus alert rules in deploy/: valid, unit-tested with promtool, and complete.

promtool comes with Debian's ``prometheus`` package (``.ci/run`` installs it).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from workers.observability import metrics

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "execq-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "execq-alerts.test.yml"

# The runbook's headings in docs/operations.md (``### `<name>` ``), whose GitHub anchors
# are the names themselves: the rules link to them.
RUNBOOK_ANCHORS = frozenset(
    {
        "possible_orphaned_position",
        "signal_undelivered",
        "order_unknown",
        "aged_close_failing",
        "aged_position_unclosable",
        "stream_stale",
        "worker_down",
        "rate_limit_cooldown",
        "queue_growing",
        "position_exceeds_book",
        "account_auth_failed",
    }
)
RUNBOOK = "docs/operations.md#"
# The catch-all rule links to the heading named after the alert kind it saw.
KIND_RUNBOOK = RUNBOOK + "{{ $labels.kind }}"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "promtool not found: install Debian's prometheus package "
            "(apt-get install --no-install-recommends prometheus) to check the alert rules"
        )
    return found


def run_promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# The functions that raise an alert, the kind their second argument (the wrappers of
# ``raise_alert`` pass their own ``kind`` parameter through).
ALERT_RAISERS = ("raise_alert", "raise_order_alert")


def _pass_through_calls(tree: ast.AST) -> set[int]:
    """Ids of calls inside a function with a ``kind`` parameter that pass ``kind`` on."""
    ids: set[int] = set()
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        if "kind" not in {argument.arg for argument in function.args.args}:
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and len(node.args) >= 2:
                if isinstance(node.args[1], ast.Name) and node.args[1].id == "kind":
                    ids.add(id(node))
    return ids


def _literal_kind(node: ast.expr) -> ast.Constant | None:
    """The kind as a literal: a string, or a member of an alert-kind enum (``AlertKind.X.value``)."""
    if isinstance(node, ast.Constant):
        return node
    if (
        isinstance(node, ast.Attribute)
        and node.attr == "value"
        and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "AlertKind"
    ):
        from workers.execution.aged_close import AlertKind

        return ast.Constant(AlertKind[node.value.attr].value)
    return None


def raised_alert_kinds() -> dict[str, str]:
    """Every ``raise_alert(session, "<kind>", ..., severity=...)`` (or a wrapper's call) in the
    runtime, by kind."""
    kinds: dict[str, str] = {}
    for path in sorted((ROOT / "workers").rglob("*.py")) + sorted((ROOT / "tasks").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        wrappers = _pass_through_calls(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or id(node) in wrappers:
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in ALERT_RAISERS or len(node.args) < 2:
                continue
            kind = _literal_kind(node.args[1])
            assert kind is not None, f"{path}:{node.lineno}: alert kind not a literal"
            severity = next(
                (keyword.value for keyword in node.keywords if keyword.arg == "severity"), None
            )
            if severity is None:
                kinds[kind.value] = "critical"  # raise_alert's default
            else:
                assert isinstance(severity, ast.Constant), f"{path}:{node.lineno}"
                kinds[kind.value] = severity.value
    return kinds


def test_the_rules_and_the_prometheus_config_pass_promtool_check() -> None:
    # Given the rules and the config compose's prometheus service loads
    # When promtool checks them
    rules = run_promtool("check", "rules", str(RULES))
    config = run_promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))

    # Then both are valid, and the config finds the rules file
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    # Given input series for every rule (firing, not firing, clearing)
    # When promtool evaluates the rules over them
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)

    # Then every expected alert fired with its labels and annotations, and no other
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_has_a_severity_and_a_runbook_link() -> None:
    rules = alert_rules()

    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url == KIND_RUNBOOK or (
            url.startswith(RUNBOOK) and url.removeprefix(RUNBOOK) in RUNBOOK_ANCHORS
        ), f"{rule['alert']}: {url}"
        assert rule["annotations"]["summary"], rule["alert"]

    # Every runbook entry has a rule that links to it.
    linked = {rule["annotations"]["runbook_url"].removeprefix(RUNBOOK) for rule in rules}
    assert RUNBOOK_ANCHORS <= linked


def test_every_alert_kind_execq_raises_is_exposed_from_the_start_and_alerted() -> None:
    # Given every alert kind the runtime raises, with its severity
    raised = raised_alert_kinds()
    assert "possible_orphaned_position" in raised  # the scan finds the calls

    # Then a worker exposes each at 0 from its start, under the severity it is raised with
    # (a series that first appears at 1 shows no increase(), and the alert would be missed)
    for kind, severity in raised.items():
        assert metrics.ALERT_KINDS.get(kind) == severity, (kind, severity)

    # And each critical kind has a rule: its own, or the catch-all, which leaves out
    # exactly the critical kinds with rules of their own
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    catch_all = re.search(r'kind!~"([^"]+)"', rules["ExecqCriticalAlertRaised"])
    assert catch_all is not None
    left_out = set(catch_all.group(1).split("|"))
    own = {kind for expr in rules.values() for kind in re.findall(r'kind="([^"]+)"', expr)}
    critical = {kind for kind, severity in metrics.ALERT_KINDS.items() if severity == "critical"}
    assert left_out == own & critical
