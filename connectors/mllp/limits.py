"""Limits that keep one peer from taking the listener down: connections and unfinished frames.

A listener that accepts whatever arrives lets a single peer exhaust what every other sender
needs: file descriptors (20,000 idle sockets filled the open-file limit: no more ACKs, no
``/healthz``, folder scans failing) and memory (each connection may hold an unfinished frame
up to the frame limit). These objects are the bounds, shared by every listener of a process:

- `ListenerLimits` (one channel): how many connections, how many from one peer address, and
  how long a frame may take from its start block to its end block. The idle timeout only
  counts silence; a peer sending one byte per idle period would otherwise hold its
  connection and its partial frame for ever (slowloris).
- `SharedLimits` (the process): connections over all listeners, capped below the open-file
  limit so that the store, the folder channels and HTTP keep descriptors; and a budget of
  bytes held in unfinished frames over all connections. A frame that would take the budget
  over is cut to its head (as an oversized frame is) and answered AR when it ends: the
  sender learns it was refused, the head is stored for the operator, and memory stays
  bounded whatever the number of connections. Frames already decoded but waiting behind
  backpressure (a connection owes `max_in_flight` replies) hold their bytes too, and are
  counted in the same budget until they are handed to the handler.
- `LogOncePerSecond`: refusals are logged at most once a second per reason, with a count of
  what was suppressed — never a line (or a traceback) per refused connection.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_CONNECTIONS_PER_PEER = 256
DEFAULT_FRAME_TIMEOUT_S = 120.0
DEFAULT_MAX_CONNECTIONS_TOTAL = 4096
DEFAULT_PENDING_FRAME_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """One listener's bounds (routes.yaml, per channel). None means unbounded."""

    max_connections: int | None = DEFAULT_MAX_CONNECTIONS
    max_connections_per_peer: int | None = DEFAULT_MAX_CONNECTIONS_PER_PEER
    frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S


class LogOncePerSecond:
    """Rate-limited warnings, one key per reason: the first is logged at once, the others
    within the same second are counted and reported with the next line."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, message: str, *args: Any, extra: dict[str, Any] | None = None
                ) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] += 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        fields = {"reason": key, "suppressed": suppressed, **(extra or {})}
        if suppressed:
            message += " (%d more since the last report)"
            args = (*args, suppressed)
        self._log.warning(message, *args, extra=fields)
        return True


@dataclass(slots=True)
class SharedLimits:
    """Process-wide bounds, shared by every listener (routes.yaml `limits`)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS_TOTAL
    pending_frame_bytes: int = DEFAULT_PENDING_FRAME_BYTES
    connections: int = 0
    pending: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # reason → refusals
    frames_cut: int = 0  # frames cut to their head because the budget was spent

    def take_connection(self) -> bool:
        if self.connections >= self.max_connections:
            return False
        self.connections += 1
        return True

    def release_connection(self) -> None:
        self.connections -= 1

    def take_bytes(self, n: int) -> bool:
        """Reserve `n` bytes of the unfinished-frame budget; False when it would overflow."""
        if self.pending + n > self.pending_frame_bytes:
            return False
        self.pending += n
        return True

    def hold_bytes(self, n: int) -> None:
        """Count `n` bytes that are already in memory and can no longer be refused: frames
        decoded but held back by backpressure. They take the budget without a check, so
        that the next unfinished frames anywhere are the ones cut while these wait."""
        self.pending += n

    def release_bytes(self, n: int) -> None:
        self.pending -= n
