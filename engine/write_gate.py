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
Other processes on the same file (the CLI) are not covered: SQLite's busy handler is.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from typing import Any

from sqlalchemy import Engine, event

log = logging.getLogger("parcours.store")

_GATES: weakref.WeakKeyDictionary[Engine, WriteGate] = weakref.WeakKeyDictionary()
# BEGIN IMMEDIATE: a transaction that reads before it writes takes the write lock first
# (engine/timeline/service.py), so no other writer commits between its reads and its writes.
_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|WITH|BEGIN\s+IMMEDIATE)\b",
                    re.I)


class WriteGate:
    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._cond = threading.Condition()
        self._owner: int | None = None  # the thread holding it; it may take it again
        self._depth = 0
        self._holders: dict[int, bool] = {}  # id(DBAPI connection) -> holds the gate
        self.waits = 0
        self.timeouts = 0

    def hold(self, dbapi_connection: Any) -> None:
        """Take the gate for this connection's transaction (no-op if it already has it)."""
        key = id(dbapi_connection)
        me = threading.get_ident()
        with self._cond:
            if key in self._holders:
                return
            if self._owner is not None and self._owner != me:
                self.waits += 1
                if not self._cond.wait_for(lambda: self._owner is None, self.timeout):
                    self.timeouts += 1
                    self._holders[key] = False
                    log.warning("SQLite write gate not free after %.0f s; writing without it",
                                self.timeout)
                    return
            self._owner = me
            self._depth += 1
            self._holders[key] = True

    def release(self, dbapi_connection: Any) -> None:
        """The transaction ended (or its connection left): the next writer may go."""
        with self._cond:
            if not self._holders.pop(id(dbapi_connection), False):
                return
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify()

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
