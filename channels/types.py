"""The two callables a channel needs from whoever composes it (the engine)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

# receive(raw, remote) -> ACK payload or None; called in arrival order, awaited in order.
Receive: TypeAlias = Callable[[bytes, str | None], Awaitable[bytes | None]]
# receive_cut(head, size, reason, remote) -> ACK payload or None, for oversized/truncated frames.
ReceiveCut: TypeAlias = Callable[[bytes, int, str, str | None], Awaitable[bytes | None]]


@dataclass
class ChannelState:
    """What the dashboard shows for a channel."""

    name: str
    type: str
    state: str = "stopped"  # stopped | listening | polling | failed
    detail: str = ""
