"""Replay every input that ever broke a fuzz harness (`fuzz/regressions/<harness>/`).

Each input goes through the harness function itself, so a bug that comes back fails here
with the same exception or broken invariant the fuzzer saw. Fast: a few dozen inputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.harness import InvariantBroken
from fuzz.targets import NAMES, load

REGRESSIONS = Path(__file__).resolve().parents[2] / "fuzz" / "regressions"
CASES = sorted((name, path) for name in NAMES
               for path in (REGRESSIONS / name).glob("*") if path.is_file()
               and path.name not in ("README.md", ".gitkeep"))


def test_every_harness_has_a_regression_folder() -> None:
    assert sorted(p.name for p in REGRESSIONS.iterdir() if p.is_dir()) == sorted(NAMES)


@pytest.mark.parametrize(("harness", "path"), CASES, ids=[f"{n}/{p.name}" for n, p in CASES])
def test_regression_input_is_handled(harness: str, path: Path) -> None:
    load(harness).run(path.read_bytes())


@pytest.mark.parametrize("harness", NAMES)
def test_harness_runs_its_own_seeds(harness: str) -> None:
    h = load(harness)
    seeds = list(h.seeds())[:5]
    assert seeds
    for seed in seeds:
        h.run(seed[: h.max_len])


def test_an_invariant_breach_is_not_swallowed() -> None:
    """A harness lets through only the refusals it documents: its own checks escape."""
    h = load("batch_split")
    from fuzz.harness import Harness

    def broken(data: bytes) -> None:
        h.target(data)
        raise InvariantBroken("planted")

    with pytest.raises(InvariantBroken):
        Harness("planted", broken, h.expected, h.seeds).run(b"MSH|^~\\&|A\r")
    with pytest.raises(KeyError):
        Harness("planted", lambda d: {}["x"], (ValueError,), h.seeds).run(b"")
