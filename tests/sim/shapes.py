"""Comparing the simulator's answers with real recorded ones, key by key.

A recording is one real answer; an exchange's answers vary (a key added in a
later API version, a field empty in one account and a number in another), so
the simulator is compared with *every* recording of a call at once:

- every key that any recording has at a place must be in the simulated
  answer, and the simulated answer has no key that no recording has;
- each value's kind is one that the recordings in the same state show (a
  resting order against resting ones, a filled one against filled ones);
- every element of a simulated list is checked, not only the first.

"Kind" is deliberately a little coarse: ccxt's recorder stored some numbers
as strings (Binance's ``orderId`` is a JSON number on the wire but a string in
one fixture and a number in another), so integers and numeric strings are
both "number". Text, empty strings, booleans, nulls, lists and objects are
kinds of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        if value == "":
            return "empty"
        try:
            float(value)
        except ValueError:
            return "text"
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


@dataclass
class Shape:
    """Kinds and keys seen at each place ("$.result.list[]") in a set of answers."""

    kinds: dict[str, set[str]] = field(default_factory=dict)
    keys: dict[str, set[str]] = field(default_factory=dict)

    def add(self, value: Any, path: str = "$") -> None:
        self.kinds.setdefault(path, set()).add(kind(value))
        if isinstance(value, dict):
            self.keys.setdefault(path, set()).update(value)
            for key, item in value.items():
                self.add(item, f"{path}.{key}")
        elif isinstance(value, list):
            for item in value:
                self.add(item, f"{path}[]")


def shape_of(answers: Iterable[Any]) -> Shape:
    shape = Shape()
    for answer in answers:
        shape.add(answer)
    return shape


def differences(
    simulated: Any,
    recorded: Iterable[Any],
    alike: Iterable[Any] | None = None,
    ids: frozenset[str] = frozenset(),
) -> list[str]:
    """Where ``simulated`` differs from the recordings.

    Keys come from all ``recorded`` answers; kinds from ``alike`` (the
    recordings in the same state as the simulated answer), all of them when
    not given. Keys in ``ids`` are compared for presence only (an id's format
    is the exchange's business).
    """
    recorded = list(recorded)
    keys = shape_of(recorded)
    kinds = shape_of(alike) if alike is not None else keys
    found: list[str] = []
    _walk(simulated, "$", keys, kinds, ids, found)
    return found


def _walk(
    value: Any, path: str, keys: Shape, kinds: Shape, ids: frozenset[str], found: list[str]
) -> None:
    name = path.rsplit(".", 1)[-1].removesuffix("[]")
    seen = kinds.kinds.get(path)
    if seen is not None and kind(value) not in seen and name not in ids:
        found.append(f"{path}: simulated {kind(value)} {value!r:.60}, recorded {sorted(seen)}")
        return
    if isinstance(value, dict) and path in keys.keys:
        expected = keys.keys[path]
        for missing in sorted(expected - set(value)):
            found.append(f"{path}.{missing}: missing in the simulator")
        for extra in sorted(set(value) - expected):
            found.append(f"{path}.{extra}: in no recorded answer")
        for key in sorted(expected & set(value)):
            _walk(value[key], f"{path}.{key}", keys, kinds, ids, found)
    elif isinstance(value, list):
        for item in value:
            _walk(item, f"{path}[]", keys, kinds, ids, found)
