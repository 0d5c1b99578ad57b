"""What a harness is, and what counts as a bug when it runs one input.

A harness feeds bytes to one part of Parcours. The part may refuse them with the error types
it documents (a `HeaderError` for a broken MSH, an `UnsafeXML` for a hostile document…):
that is the part doing its job. Anything else escaping — another exception, or an
`InvariantBroken` raised by the harness's own checks on what came back — is a bug. Hangs and
memory growth are caught by the fuzzer itself (libFuzzer `-timeout` and `-rss_limit_mb`,
see `fuzz/run.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


class InvariantBroken(AssertionError):
    """The code under test returned, but what it returned breaks a rule it promises."""


def check(condition: bool, what: str) -> None:
    """Raise `InvariantBroken` unless `condition` holds; `what` names the rule (no data)."""
    if not condition:
        raise InvariantBroken(what)


@dataclass(frozen=True)
class Harness:
    name: str
    target: Callable[[bytes], None]
    expected: tuple[type[BaseException], ...]
    seeds: Callable[[], Iterable[bytes]]
    #: atheris `max_len` default: big enough for the corpus seeds this harness starts from.
    max_len: int = 8192

    def run(self, data: bytes) -> None:
        """One input: documented refusals are swallowed, everything else propagates."""
        try:
            self.target(data)
        except self.expected:
            pass
