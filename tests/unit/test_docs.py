"""The docs are for users: no work-log language, a short benchmark page, a runbook entry
for every alert execq raises."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"

# Linked from the Prometheus rules in deploy/ (runbook_url: docs/operations.md#<kind>).
RUNBOOK_ALERTS = (
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
)


def test_no_issue_numbers_or_work_sessions_in_code_help_or_docs() -> None:
    # Compiled and binary files are not what a person reads.
    found = subprocess.run(
        ["grep", "-rniIE", "--exclude-dir=__pycache__", "issue [0-9]|session [0-9]",
         "workers", "tasks", "exchange_sim", "docs", "README.md"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert found.returncode == 1, found.stdout or found.stderr


def test_the_benchmark_page_is_a_page_not_a_notebook() -> None:
    assert len((ROOT / "docs" / "benchmarks.md").read_text().splitlines()) < 250


def _runbook_headings() -> list[str]:
    return re.findall(r"^### `([a-z_]+)`$", OPERATIONS.read_text(), flags=re.MULTILINE)


def _alert_kinds_in_code() -> set[str]:
    kinds: set[str] = set()
    for source in [*ROOT.glob("workers/**/*.py"), *ROOT.glob("tasks/**/*.py")]:
        text = source.read_text()
        kinds.update(re.findall(r"raise_alert\(\s*\w+,\s*\"([a-z_]+)\"", text))
    return kinds


def test_every_alert_has_one_runbook_section() -> None:
    headings = _runbook_headings()
    assert len(headings) == len(set(headings)), "a runbook section appears twice"
    assert _alert_kinds_in_code(), "the search for raise_alert found nothing"
    missing = (set(RUNBOOK_ALERTS) | _alert_kinds_in_code()) - set(headings)
    assert missing == set(), "alerts without a section in docs/operations.md"


def test_the_runbook_ends_with_the_threat_model() -> None:
    sections = re.findall(r"^## (.+)$", OPERATIONS.read_text(), flags=re.MULTILINE)
    assert sections[-1] == "Threat model"
