"""The runtime stands apart from the harness: a worker, beat or producer imports none of it."""

from __future__ import annotations

import json
import subprocess
import sys


def imported_modules(statement: str, env: dict[str, str] | None = None) -> set[str]:
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    ).stdout
    return set(json.loads(output.splitlines()[-1]))


def test_the_celery_app_imports_no_harness_module() -> None:
    modules = imported_modules("import workers.app")
    assert not [name for name in modules if name.startswith("workers.harness")]


def test_a_worker_registers_no_benchmark_task_unless_the_harness_asks() -> None:
    code = "from workers.app import app; app.loader.import_default_modules()"
    modules = imported_modules(code)
    assert "workers.harness.tasks" not in modules
    assert "tasks.orders" in modules


def test_the_producer_and_the_cli_import_no_harness_module() -> None:
    for statement in ("import workers.producer", "import workers.cli"):
        modules = imported_modules(statement)
        assert not [name for name in modules if name.startswith("workers.harness")], statement


def test_the_worker_the_producer_and_the_cli_import_no_web_framework() -> None:
    for statement in ("import workers.app", "import workers.producer", "import workers.cli"):
        modules = imported_modules(statement)
        assert not {"fastapi", "uvicorn", "starlette", "workers.api.app"} & modules, statement
