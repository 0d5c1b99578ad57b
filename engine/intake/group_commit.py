"""Group commit: many waiters share one transaction, so durability costs one fsync per
batch instead of one per item.

Intake runs on the event loop; the database driver blocks. A single writer thread takes
everything that queued up while it was committing the previous batch and commits it together.
Each item's future resolves only after its transaction committed — the moment an ACK may go.
The delivery runner records outcomes the same way: each partition still waits for its own
outcome before its next delivery, but concurrent partitions share the fsync.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from engine.store.database import Arrival, Saved

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("parcours.group_commit")


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    arrival: T
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    # Turns the outcome (or the exception) into the future's value on the loop, so a caller
    # that only wants an answer (intake: the ACK) needs no second future or coroutine.
    finish: Callable[[Any], Any] | None = None


class Batcher(Generic[T, R]):
    """One writer thread committing whatever `submit` queued meanwhile, in one `save` call."""

    def __init__(
        self,
        save: Callable[[list[T]], list[R | Exception]] | Callable[[list[T]], list[R]],
        *,
        max_batch: int = 512,
        on_commit: Callable[[int, float], None] | None = None,
        name: str = "parcours-group-commit",
    ) -> None:
        self._save: Callable[[list[T]], list[Any]] = save
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: list[_Pending[T, R]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.batches = 0
        self.committed = 0
        self.cpu_seconds = 0.0  # this writer thread's CPU, for parcours_stage_cpu_seconds

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.is_alive()

    def submit(
        self, arrival: T, finish: Callable[[R | Exception], Any] | None = None
    ) -> asyncio.Future[Any]:
        """Queue an item; call from the event loop. Order of calls is commit order.

        Without `finish` the future resolves to the item's outcome (or raises the store's
        error); with it, to ``finish(outcome or exception)``, called on the loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        pending = _Pending(arrival, fut, loop, finish)
        with self._cond:
            if self._closed:
                _settle([(pending, RuntimeError("store is closing"))])
                return fut
            self._queue.append(pending)
            self._cond.notify()
        return fut

    def submit_many(self, arrivals: list[T]) -> list[asyncio.Future[Any]]:
        """Queue several items at once, so the writer takes them in one batch: one `submit`
        each wakes the writer on the first, and it commits that one alone while the rest
        queue (the outcome recorder committed ~4 outcomes per transaction that way)."""
        loop = asyncio.get_running_loop()
        pending = [_Pending(a, loop.create_future(), loop) for a in arrivals]
        with self._cond:
            if self._closed:
                _settle([(p, RuntimeError("store is closing")) for p in pending])
            else:
                self._queue.extend(pending)
                self._cond.notify()
        return [p.future for p in pending]

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
            started = time.perf_counter()
            cpu = time.thread_time()
            try:
                saved = self._save([p.arrival for p in batch])
            except Exception as exc:  # the store is down: every waiter gets the error
                log.error("group commit failed", extra={"batch": len(batch), "error": repr(exc)})
                self._hand_back([(p, exc) for p in batch])
                continue
            finally:
                self.cpu_seconds += time.thread_time() - cpu
            self.batches += 1
            self.committed += len(batch)
            if self._on_commit:
                self._on_commit(len(batch), time.perf_counter() - started)
            self._hand_back(list(zip(batch, saved, strict=True)))

    def _hand_back(self, outcomes: list[tuple[_Pending[T, R], Any]]) -> None:
        # One wake-up of each waiting loop per batch, not one per message: every
        # call_soon_threadsafe writes to the loop's self-pipe and takes the GIL.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending[T, R], Any]]] = {}
        for p, s in outcomes:
            by_loop.setdefault(p.loop, []).append((p, s))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                log.warning("group commit outcome for a closed event loop",
                            extra={"items": len(items)})


class GroupCommitter(Batcher[Arrival, Saved]):
    """Intake: arrivals in, their store ids (and a resend's original ACK) out."""


def _settle(outcomes: list[tuple[_Pending[Any, Any], Any]]) -> None:
    for p, s in outcomes:
        if p.finish is not None:
            try:
                value = p.finish(s)
            except Exception as exc:
                _fail(p.future, exc)
            else:
                _resolve(p.future, value)
        elif isinstance(s, Exception):  # refused alone, after a split batch
            _fail(p.future, s)
        else:
            _resolve(p.future, s)


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
