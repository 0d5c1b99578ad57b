"""Field conditions of routes: `PV1-2 == I`, `OBX-3.3 in [L, 99LOC]`, `PID-3 exists`.

A condition over a repeating segment or field (OBX-3.3) holds when any occurrence satisfies
it, except `!=` and `not in`, which hold when no occurrence has the value — the reading an
integration engineer expects from "route ORUs that carry no local code".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from transformers.hl7.reader import Message, parse_path


class ConditionError(ValueError):
    pass


_COND = re.compile(
    r"^\s*(?P<path>[A-Za-z][A-Za-z0-9]{2}(?:\[\d+\])?(?:-\d+(?:\[\d+\])?(?:\.\d+){0,2})?)\s+"
    r"(?P<op>==|!=|not in|in|matches|exists|missing)\s*(?P<value>.*?)\s*$"
)


@dataclass(frozen=True)
class Condition:
    text: str
    path: str
    op: str
    values: tuple[str, ...]
    pattern: re.Pattern[str] | None = None

    def holds(self, message: Message) -> bool:
        found = message.get_all(self.path)
        if self.op == "exists":
            return bool(found)
        if self.op == "missing":
            return not found
        if self.op == "==":
            return self.values[0] in found if self.values[0] else not found
        if self.op == "!=":
            return self.values[0] not in found
        if self.op == "in":
            return any(v in self.values for v in found)
        if self.op == "not in":
            return not any(v in self.values for v in found)
        if self.op == "matches":
            assert self.pattern is not None
            return any(self.pattern.search(v) for v in found)
        raise AssertionError(self.op)


def _values(raw: str) -> tuple[str, ...]:
    raw = raw.strip()
    if raw.startswith("[") and raw.endswith("]"):
        items = [v.strip().strip("'\"") for v in raw[1:-1].split(",")]
        return tuple(v for v in items if v)
    return (raw.strip("'\""),)


def parse_condition(text: str) -> Condition:
    m = _COND.match(text)
    if not m:
        raise ConditionError(
            f"cannot read condition {text!r}: write PATH OP VALUE, e.g. 'PV1-2 == I', "
            "'OBX-3.3 in [L, 99LOC]', 'PID-3 exists', 'MSH-4 matches ^LAB'"
        )
    path, op, value = m["path"], m["op"], m["value"]
    try:
        parse_path(path)
    except ValueError as exc:
        raise ConditionError(str(exc)) from None
    if op in ("exists", "missing"):
        if value:
            raise ConditionError(f"{op!r} takes no value in {text!r}")
        return Condition(text, path.upper(), op, ())
    if not value:
        raise ConditionError(f"condition {text!r} needs a value after {op!r}")
    if op in ("in", "not in") and not (value.startswith("[") and value.endswith("]")):
        raise ConditionError(f"{op!r} needs a list in brackets, e.g. [A, B], in {text!r}")
    pattern = None
    if op == "matches":
        try:
            pattern = re.compile(value.strip("'\""))
        except re.error as exc:
            raise ConditionError(f"bad regular expression in {text!r}: {exc}") from None
    return Condition(text, path.upper(), op, _values(value), pattern)


def compile_all(conditions: list[str]) -> Callable[[Message], bool]:
    parsed = [parse_condition(c) for c in conditions]
    return lambda msg: all(c.holds(msg) for c in parsed)
