"""workers.execution stays pure: it imports without settings or services and never reads a clock."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "workers" / "execution"
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
SERVICES = ("workers.settings", "workers.app", "redis", "sqlalchemy", "celery", "psycopg")
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "sleep"}


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_without_settings_or_services(module):
    # Given a fresh interpreter with no environment for execq at all
    code = (
        f"import sys, workers.execution.{module}\n"
        f"loaded = [m for m in {SERVICES!r} if m in sys.modules]\n"
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={}, check=False
    )
    # Then it imports, and pulls in none of the services
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("module", MODULES)
def test_no_module_reads_a_clock_or_sleeps(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    calls = [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    ]
    assert not CLOCK_CALLS & set(calls), "pass `now` in; decisions must not read the clock"
