"""`discard`: a destination that accepts everything, for benchmarks and routes under construction.

(Not named `null`: YAML reads an unquoted null as nothing at all.)
"""

from __future__ import annotations

from typing import Any

from .base import OutboundItem, Outcome


class NullDestination:
    type = "discard"

    def __init__(self, name: str, cfg: dict[str, Any]) -> None:
        self.name = name

    async def send(self, item: OutboundItem) -> Outcome:
        return Outcome.delivered()

    async def close(self) -> None:
        return None
