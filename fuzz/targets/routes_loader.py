"""The routes.yaml loader (`engine.config.load_text`): YAML, interpolation, JSON Schema,
references, transformer options.

A bug is any exception other than `ConfigError` (whose problems must each carry a line and a
column inside the file, so an operator can find them). Transformers are resolved against
the built-in registry only: a fuzzed `transformer_paths` must not import modules.
"""

from __future__ import annotations

from fuzz import seeds
from fuzz.harness import Harness, check
from transformers.builtin import BUILTIN


def _known(name: str) -> str | None:
    return None if name in BUILTIN else f"unknown transformer {name!r}"


def target(data: bytes) -> None:
    from engine.config import ConfigError, load_text

    text = data.decode("utf-8", "replace")
    lines = len(text.splitlines()) + 2  # splitlines knows every YAML line break and more
    try:
        load_text(text, env={"PARCOURS_TEST": "1"}, known_transformers=_known)
    except ConfigError as exc:
        for problem in exc.problems:
            check(1 <= problem.line <= lines, "a problem points outside the file")
            check(problem.column >= 1, "a problem has no column")


# 4 KiB holds every seed (the largest, the shipped routes without comment lines, is 3 KiB).
HARNESS = Harness("routes_loader", target, (), seeds.route_files, max_len=4096)
