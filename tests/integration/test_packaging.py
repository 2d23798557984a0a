"""The wheel works outside a checkout: ``execq migrate``, ``execq sim``, a Celery worker,
the console's pages.

The wheel is built from a copy of the source tree, installed with ``--no-deps``
into a fresh virtual environment, and run from a temporary directory. The
dependencies come from the project's ``.venv`` through a ``.pth`` line, which adds
its site-packages to ``sys.path`` without running its ``.pth`` files: the editable
install of the checkout stays out of reach, so everything execq imports comes from
the wheel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ADMIN_DATABASE_URL, ROOT, TEST_REDIS_URL
from workers.harness.stack import Stack

pytestmark = pytest.mark.services

SCRATCH_DATABASE = f"execq_wheel_{os.getpid()}"
# What a copy of the tree for the build leaves out: environments, caches, tests, docs.
NOT_BUILT = (".venv", ".git", "tests", "docs", "build", "dist", "*.egg-info", "__pycache__")
NOT_BUILT += (".pytest_cache", ".ruff_cache", ".hypothesis", ".execq")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fresh virtual environment with only execq's wheel installed in it."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_BUILT))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(base / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (base / "dist").glob("execq-*.whl")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    (site_packages / "execq-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run_dir = base / "run"
    run_dir.mkdir()
    return {"wheel": wheel, "venv": venv, "site_packages": site_packages, "run_dir": run_dir}


def _database_url(name: str) -> str:
    base = ADMIN_DATABASE_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}"


@pytest.fixture
def scratch_database() -> Iterator[str]:
    drop = f'DROP DATABASE IF EXISTS "{SCRATCH_DATABASE}" WITH (FORCE)'
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(f'CREATE DATABASE "{SCRATCH_DATABASE}"')
    yield _database_url(SCRATCH_DATABASE)
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(drop)


def _outside_env(installed: dict[str, Path], **extra: str) -> dict[str, str]:
    """The environment of a user's shell: the venv's bin first, nothing pointing at the checkout."""
    keep = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    path = f"{installed['venv'] / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**keep, "PATH": path, "PYTHONNOUSERSITE": "1", **extra}


def _run(installed: dict[str, Path], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        cwd=installed["run_dir"],
        env=_outside_env(installed, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_wheel_carries_the_migrations_and_no_tests(installed: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    shipped = {path.name for path in (ROOT / "migrations" / "versions").glob("[!_]*.py")}
    assert shipped and {f"workers/migrations/versions/{name}" for name in shipped} <= names
    assert {"workers/migrations/env.py", "workers/migrations/script.py.mako"} <= names
    assert {"beat_schedule.py", "tasks/__init__.py", "exchange_sim/__init__.py"} <= names
    console = ROOT / "workers" / "api" / "console"
    shipped_files = [*console.glob("templates/*.html"), *console.glob("static/*")]
    assert shipped_files
    assert {f"{path.relative_to(ROOT)}" for path in shipped_files} <= names
    assert not [name for name in names if name.startswith(("tests/", "migrations/"))]


def test_execq_migrate_from_the_wheel_brings_a_database_to_head(
    installed: dict[str, Path], scratch_database: str
) -> None:
    from alembic.script import ScriptDirectory

    from workers.store.migrate import alembic_config

    migrated = _run(installed, "execq", "migrate", DATABASE_URL=scratch_database)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    assert "database migrated to head" in migrated.stdout

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with psycopg.connect(ADMIN_DATABASE_URL.rsplit("/", 1)[0] + f"/{SCRATCH_DATABASE}") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
        tables = {row[0] for row in db.execute("SELECT tablename FROM pg_tables")}
    assert {"orders", "positions", "aged_positions", "events", "alerts"} <= tables


def test_execq_sim_and_the_app_import_from_the_wheel(installed: dict[str, Path]) -> None:
    sim_help = _run(installed, "execq", "sim", "--help")
    assert sim_help.returncode == 0 and "Usage: " in sim_help.stdout, sim_help.stderr

    probe = (
        "import json, sys, workers, workers.app\n"
        "workers.app.app.loader.import_default_modules()\n"
        "print(json.dumps({'workers': workers.__file__, 'tasks': sorted(workers.app.app.tasks),"
        " 'harness': [m for m in sys.modules if m.startswith('workers.harness')]}))"
    )
    imported = _run(installed, "python", "-c", probe)
    assert imported.returncode == 0, imported.stderr[-3000:]
    found = json.loads(imported.stdout.strip().splitlines()[-1])
    assert Path(found["workers"]).is_relative_to(installed["site_packages"])
    assert {"execute_market_order", "recovery_sweep", "aged_phase_sweep"} <= set(found["tasks"])
    assert found["harness"] == []


def test_a_celery_worker_from_the_wheel_answers_a_ping(installed: dict[str, Path]) -> None:
    # A Redis database of its own: the suite's workers consume database 0.
    broker = TEST_REDIS_URL.rsplit("/", 1)[0] + "/7"
    with Stack(
        env={"REDIS_URL": broker, "PYTHONNOUSERSITE": "1", "PYTHONPATH": ""},
        workdir=installed["run_dir"] / "logs",
        python=str(installed["venv"] / "bin" / "python"),
        cwd=installed["run_dir"],
    ) as stack:
        worker = stack.start_worker("wheel-probe", concurrency=1)
        assert stack.ping("wheel-probe")
        assert "wheel-probe@localhost ready" in worker.log_tail(200)


def test_the_console_from_the_wheel_serves_its_pages_and_files(installed: dict[str, Path]) -> None:
    import httpx

    # A Redis database of its own, as the worker's probe above.
    redis_url = TEST_REDIS_URL.rsplit("/", 1)[0] + "/7"
    keys = json.dumps([{"name": "probe", "key": "p" * 32, "scopes": ["read"]}])
    with Stack(
        env={
            "REDIS_URL": redis_url,
            "EXECQ_API_KEYS": keys,
            "PYTHONNOUSERSITE": "1",
            "PYTHONPATH": "",
        },
        workdir=installed["run_dir"] / "logs",
        python=str(installed["venv"] / "bin" / "python"),
        cwd=installed["run_dir"],
    ) as stack:
        url = stack.start_api(name="wheel-console")
        with httpx.Client(base_url=url, timeout=10) as client:
            login = client.get("/console/login")
            assert login.status_code == 200, login.text
            assert 'name="api_key"' in login.text
            assets = re.findall(r'(?:href|src)="(/console/static/[^"]+)"', login.text)
            assert len(assets) == 2, assets  # the stylesheet and the script
            for asset in assets:
                assert client.get(asset).status_code == 200, asset
