"""SQLite's one writer, handed over inside the process instead of polled for.

SQLite lets one connection write at a time. A second writer gets SQLITE_BUSY and its busy
handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries — so when the
intake's group commit, the router and the outcome recorder (three threads of one engine) meet,
the loser sleeps far longer than the winner writes. The gate makes them queue on a condition
instead: a writer waits exactly until the previous one commits or rolls back.

It is taken before a transaction's first write statement and released after its COMMIT or
ROLLBACK (or when its connection goes back to the pool, is invalidated or closed). Reads do
not take it (WAL readers never block). A writer that cannot get it within `timeout` goes on
without it — SQLite's own locking still keeps the data right — and says so in the log, so a
bug holding the gate can slow writers down but never stop them.
Across processes (the intake process and its worker) an `flock` on a file beside the database
does the same; other processes on the file (the CLI) are covered by SQLite's busy handler.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event

log = logging.getLogger("parcours.store")

_GATES: weakref.WeakKeyDictionary[Engine, WriteGate] = weakref.WeakKeyDictionary()
# BEGIN IMMEDIATE: a transaction that reads before it writes takes the write lock first
# (engine/timeline/service.py), so no other writer commits between its reads and its writes.
_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|WITH|BEGIN\s+IMMEDIATE)\b",
                    re.I)


@dataclass(frozen=True)
class Hold:
    thread: str  # the holder's thread name
    taken: float  # time.perf_counter()
    released: float
    queued: int  # writers waiting for the gate when it was released


class WriteGate:
    def __init__(self, timeout: float = 10.0, lock_file: str | None = None) -> None:
        """`lock_file`: the gate spans processes too (the intake process and its worker,
        engine/delivery/worker.py): whoever holds it in this process also holds an exclusive `flock`
        on that file, which the kernel hands to the next process the moment it is released —
        SQLite's busy handler between processes would sleep instead."""
        self.timeout = timeout
        self._lock_fd: int | None = None
        # A second file says "a writer of another process waits": it holds a shared lock on
        # it while blocked on the gate's file, so the holder can ask (others_waiting) without
        # taking anything from it.
        self._wants_fd: int | None = None
        if lock_file is not None:
            self._lock_fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
            self._wants_fd = os.open(lock_file + ".wants", os.O_RDWR | os.O_CREAT, 0o600)
        self._cond = threading.Condition()
        self._owner: int | None = None  # the thread holding it; it may take it again
        self._depth = 0
        self._holders: dict[int, bool] = {}  # id(DBAPI connection) -> holds the gate
        # First come, first served: a writer that releases the gate and asks again at once
        # (the timeline committing a batch in short transactions) queues behind the writers
        # already waiting — the intake's group commit among them — instead of barging back.
        self._queue: deque[int] = deque()
        self._next_ticket = 0
        self.waits = 0
        self.timeouts = 0
        # Hold records, off unless `record()` is called (tests, bench/prune.py): who held the
        # gate, from when to when (perf_counter), and how many writers were queued for it
        # when it was released — what shows a long writer yields between its transactions.
        self.holds: deque[Hold] | None = None
        self._taken_at = 0.0
        self._taken_by = ""

    def record(self, maxlen: int = 200_000) -> deque[Hold]:
        """Start keeping a `Hold` per hold of the gate (the newest `maxlen`)."""
        self.holds = deque(maxlen=maxlen)
        return self.holds

    def close(self) -> None:
        for fd in (self._lock_fd, self._wants_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._wants_fd = None

    def others_waiting(self) -> bool:
        """Whether another writer — a thread of this process or a writer of the other one —
        waits for the gate. A long writer (the timeline's batch, the pruner) commits at its
        next safe point when it does, so the intake's group commit never waits behind more
        than one step of it."""
        with self._cond:
            if self._queue:
                return True
        if self._wants_fd is None:
            return False
        try:
            fcntl.flock(self._wants_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._wants_fd, fcntl.LOCK_UN)
        return False

    def hold(self, dbapi_connection: Any) -> None:
        """Take the gate for this connection's transaction (no-op if it already has it)."""
        key = id(dbapi_connection)
        me = threading.get_ident()
        with self._cond:
            if key in self._holders:
                return
            if self._owner != me:
                ticket = self._next_ticket
                self._next_ticket += 1
                self._queue.append(ticket)
                if self._owner is not None or self._queue[0] != ticket:
                    self.waits += 1
                    if not self._cond.wait_for(
                            lambda: self._owner is None and self._queue[0] == ticket,
                            self.timeout):
                        self.timeouts += 1
                        self._queue.remove(ticket)
                        self._holders[key] = False
                        self._cond.notify_all()
                        log.warning("SQLite write gate not free after %.0f s; writing without "
                                    "it", self.timeout)
                        return
                self._queue.popleft()
            self._owner = me
            self._depth += 1
            self._holders[key] = True
            first = self._depth == 1
            if first and self.holds is not None:
                self._taken_at = time.perf_counter()
                self._taken_by = threading.current_thread().name
        if first and self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # The other process's writer has it: say so while waiting (others_waiting).
                assert self._wants_fd is not None
                fcntl.flock(self._wants_fd, fcntl.LOCK_SH)
                try:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                finally:
                    fcntl.flock(self._wants_fd, fcntl.LOCK_UN)

    def release(self, dbapi_connection: Any) -> None:
        """The transaction ended (or its connection left): the next writer may go."""
        with self._cond:
            if not self._holders.pop(id(dbapi_connection), False):
                return
            self._depth -= 1
            if self._depth == 0:
                if self.holds is not None:
                    self.holds.append(Hold(self._taken_by, self._taken_at,
                                           time.perf_counter(), len(self._queue)))
                if self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                self._owner = None
                self._cond.notify_all()  # the one whose ticket is served goes

    def install(self, engine: Engine) -> None:
        """Wire the gate into an SQLite engine's statements, commits and pool."""
        _GATES[engine] = self
        dialect = engine.dialect
        do_commit, do_rollback = dialect.do_commit, dialect.do_rollback

        def commit(dbapi_connection: Any) -> None:
            try:
                do_commit(dbapi_connection)
            finally:
                self.release(_raw(dbapi_connection))

        def rollback(dbapi_connection: Any) -> None:
            try:
                do_rollback(dbapi_connection)
            finally:
                self.release(_raw(dbapi_connection))

        dialect.do_commit = commit  # type: ignore[method-assign]
        dialect.do_rollback = rollback  # type: ignore[method-assign]

        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if _WRITE.match(statement):
                self.hold(conn.connection.dbapi_connection)

        def _gone(dbapi_connection: Any, *_args: Any) -> None:
            if dbapi_connection is not None:
                self.release(dbapi_connection)

        for name in ("checkin", "invalidate", "close", "soft_invalidate"):
            event.listen(engine.pool, name, _gone)


def gate_of(engine: Engine) -> WriteGate | None:
    """The gate installed on `engine` (SQLite), None for PostgreSQL."""
    return _GATES.get(engine)


def _raw(connection: Any) -> Any:
    """The DBAPI connection behind the pool's proxy (reset-on-return passes the proxy)."""
    return getattr(connection, "dbapi_connection", connection)
