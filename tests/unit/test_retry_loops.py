"""Every wait and retry of a worker runs through the one executor (``workers.retrying``)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The executor, `execq events --follow` (a follow, not a retry: one query a second), and
# the stream holder's one asyncio wait (``pause``: its own process, no task deadline).
ALLOWED = {
    ROOT / "workers" / "retrying.py",
    ROOT / "workers" / "cli" / "main.py",
    ROOT / "workers" / "streams" / "holder.py",
}


def test_no_module_but_the_executor_sleeps():
    sleeping = [
        f"{path.relative_to(ROOT)}:{number}"
        for directory in ("workers", "tasks")
        for path in sorted((ROOT / directory).rglob("*.py"))
        if "harness" not in path.parts and path not in ALLOWED
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\btime\.sleep\(|\bsleep\(", line)
    ]
    assert sleeping == [], "retry through workers.retrying instead"
