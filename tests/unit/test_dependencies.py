"""Every third-party module the package imports is a dependency it declares.

An import that works only because another dependency happens to pull its
distribution in breaks the day that dependency drops it (``exchange_sim`` once
imported ``orjson``, which only ``ccxt`` brought along). Imports guarded by
``except ImportError`` are optional and exempt.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("workers", "tasks", "exchange_sim", "migrations", "beat_schedule.py")
OWN = {"workers", "tasks", "exchange_sim", "migrations", "beat_schedule"}


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        _normalised(re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0])
        for spec in project["dependencies"]
    }


def _optional(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside a ``try`` whose handlers catch ImportError."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = {
            name.id
            for handler in node.handlers
            for name in ast.walk(handler.type or ast.Name("BaseException"))
            if isinstance(name, ast.Name)
        }
        if caught & {"ImportError", "ModuleNotFoundError"}:
            for inner in node.body:
                lines.update(n.lineno for n in ast.walk(inner) if hasattr(n, "lineno"))
    return lines


def imported_modules() -> dict[str, str]:
    """Top-level third-party module -> the first file that imports it unconditionally."""
    found: dict[str, str] = {}
    for entry in SHIPPED:
        path = ROOT / entry
        for source in [path] if path.is_file() else sorted(path.rglob("*.py")):
            tree = ast.parse(source.read_text())
            optional = _optional(tree)
            for node in ast.walk(tree):
                if getattr(node, "lineno", None) in optional:
                    continue
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in OWN:
                        found.setdefault(top, str(source.relative_to(ROOT)))
    return found


def test_every_imported_distribution_is_declared() -> None:
    distributions = packages_distributions()
    wanted = declared()
    undeclared = {
        module: (where, distributions.get(module))
        for module, where in imported_modules().items()
        if not {_normalised(dist) for dist in distributions.get(module, [module])} & wanted
    }
    assert undeclared == {}, "imported but not in pyproject's dependencies"


def test_the_check_sees_a_direct_import() -> None:
    assert {"celery", "ccxt", "orjson", "sqlalchemy"} <= set(imported_modules())
