"""The in-process bus of the embedded default: "partition p has work" notices without a broker.

One process owns every partition, so a notice only has to reach this process's event loop.
kombu's memory transport did that by polling its in-memory queues from a thread every few
milliseconds, which cost CPU while idle and while busy (docs/benchmarks.md). Here a notice is a
`call_soon_threadsafe`. Semantics are the bus's (engine/delivery/bus.py): notices coalesce, a notice
that arrives while its partition's pass runs starts one more pass after it (the pass may have
read the store before the new work was committed), and the store stays the truth — the
sweeper still re-announces due work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("parcours.bus")


class LocalBus:
    is_memory = True

    def __init__(self, partitions: int, on_notice: Callable[[int], Awaitable[None]]) -> None:
        self.partitions = partitions
        self._on_notice = on_notice
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: dict[int, asyncio.Task[None]] = {}
        self._again: set[int] = set()
        self.connected = False
        self.published = 0
        self.consumed = 0
        self.publish_failures = 0

    @property
    def consuming(self) -> frozenset[int]:
        return frozenset(range(self.partitions))

    async def set_partitions(self, partitions: set[int]) -> None:
        """One process owns every partition: nothing to subscribe to or cancel."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.connected = True

    def stop(self, timeout: float = 10.0) -> None:
        """Like the broker bus losing its connection: the passes running are cancelled, and
        each finishes and records the batch it has in flight (the runner's `aclose` waits)."""
        self.connected = False
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for task in list(self._running.values()):
            loop.call_soon_threadsafe(task.cancel)

    def notify(self, partition: int) -> None:
        """Thread-safe, non-blocking."""
        if self._loop is None or not self.connected or not 0 <= partition < self.partitions:
            return
        self.published += 1
        try:
            self._loop.call_soon_threadsafe(self._kick, partition)
        except RuntimeError:  # the loop is closed: the engine is stopping
            pass

    def _kick(self, partition: int) -> None:
        if not self.connected:
            return
        if partition in self._running:
            self._again.add(partition)
            return
        self.consumed += 1
        task = asyncio.ensure_future(self._on_notice(partition))
        self._running[partition] = task
        task.add_done_callback(lambda t, p=partition: self._done(p, t))

    def _done(self, partition: int, task: asyncio.Task[None]) -> None:
        self._running.pop(partition, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("partition pass failed", extra={"partition": partition,
                                                      "error": repr(task.exception())})
        if partition in self._again:
            self._again.discard(partition)
            self._kick(partition)
