"""`discard`: a destination that accepts everything, for benchmarks and routes under construction.

(Not named `null`: YAML reads an unquoted null as nothing at all.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import OutboundItem, Outcome


class NullDestination:
    type = "discard"

    def __init__(self, name: str, cfg: dict[str, Any]) -> None:
        self.name = name

    async def send(self, item: OutboundItem) -> Outcome:
        return Outcome.delivered()

    async def send_batch(self, items: Sequence[OutboundItem]) -> list[Outcome | None]:
        """A batch destination (channels/outbound/base.py), so it stands for one in a
        benchmark: the runner hands it `batch_size` deliveries and records them together."""
        return [Outcome.delivered() for _ in items]

    async def close(self) -> None:
        return None
