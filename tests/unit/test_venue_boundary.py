"""Every exchange difference lives in ``workers/exchange/venues/``: one module per exchange,
each registered, and nothing outside the package branches on which exchange it talks to.

The rule, checked on the syntax tree of every module under ``workers/`` outside the
venue package (runtime and harness alike): an exchange's name (a registered venue's
ccxt class or simulator name: ``binanceusdm``, ``binance``, ``bybit``, ``okx``) may not
be a string literal inside a condition — the test of an ``if``/``elif``/``while``, a
conditional expression, a comprehension's ``if``, a comparison (``==``, ``!=``, ``in``,
``is``) or a ``match`` case. Naming an exchange as data (the default accounts, the
demo's legs, a fault plan, a help text) is fine: that chooses where to trade, not how.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import typing
from collections.abc import Iterator
from pathlib import Path

import workers.exchange.venues as venues_package
from workers.exchange.venues import VENUES
from workers.exchange.venues.base import Venue
from workers.settings import CcxtClass

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ROOT / "workers"
VENUE_PACKAGE = WORKERS / "exchange" / "venues"
EXCHANGE_NAMES = frozenset(VENUES) | {venue.exchange for venue in VENUES.values()}

# Places that may still ask which exchange it is, each with why (none today).
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def _conditions(tree: ast.AST) -> Iterator[ast.AST]:
    for node in ast.walk(tree):
        if isinstance(node, ast.If | ast.While | ast.IfExp):
            yield node.test
        elif isinstance(node, ast.comprehension):
            yield from node.ifs
        elif isinstance(node, ast.Compare):
            yield node
        elif isinstance(node, ast.match_case):
            yield node.pattern


def _exchange_literals(condition: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(condition):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.lower() in EXCHANGE_NAMES:
                yield node.lineno, node.value


def exchange_conditions(path: Path) -> set[tuple[str, int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    relative = path.relative_to(ROOT).as_posix()
    return {
        (relative, line, name)
        for condition in _conditions(tree)
        for line, name in _exchange_literals(condition)
    }


def test_nothing_outside_the_venues_branches_on_the_exchange():
    # Given every module of workers/ outside the venue package
    found: set[tuple[str, int, str]] = set()
    for path in sorted(WORKERS.rglob("*.py")):
        if VENUE_PACKAGE not in path.parents:
            found |= exchange_conditions(path)
    # Then none names an exchange in a condition, besides the known exceptions
    unexpected = sorted(hit for hit in found if (hit[0], hit[2]) not in KNOWN_EXCEPTIONS)
    assert unexpected == [], "move these into the exchange's venue module: " + repr(unexpected)
    # And each known exception still exists (drop it from the list once it is gone)
    assert {(path, name) for path, _, name in found} >= KNOWN_EXCEPTIONS


def test_the_rule_catches_the_forms_a_branch_takes():
    source = """
if account.ccxt_class == "okx":
    pass
x = 1 if exchange in ("bybit", "kraken") else 2
ys = [a for a in accounts if a.exchange != "binance"]
match venue:
    case "binanceusdm":
        pass
DEFAULTS = {"okx": 1}  # data, not a branch
"""
    tree = ast.parse(source)
    names = sorted({hit for c in _conditions(tree) for hit in _exchange_literals(c)})
    assert names == [(2, "okx"), (4, "bybit"), (5, "binance"), (7, "binanceusdm")]


def test_the_venue_modules_are_exactly_the_registry():
    # Each module of the package other than the template holds one registered venue
    modules = sorted(
        info.name for info in pkgutil.iter_modules(venues_package.__path__) if info.name != "base"
    )
    defined = {}
    for name in modules:
        module = importlib.import_module(f"{venues_package.__name__}.{name}")
        classes = [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, Venue)
            and value is not Venue
            and value.__module__ == module.__name__
        ]
        assert len(classes) == 1, f"{name}: one venue per module, found {classes}"
        defined[name] = classes[0]
    assert set(defined.values()) == set(VENUES.values())
    assert {venue.ccxt_class: venue for venue in defined.values()} == VENUES
    # The settings accept exactly the registered ccxt classes, and the simulator names differ
    assert set(typing.get_args(CcxtClass)) == set(VENUES)
    assert len({venue.exchange for venue in VENUES.values()}) == len(VENUES)
