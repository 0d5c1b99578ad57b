"""The worker's commits without an fsync each, made durable together once a second.

What the worker writes after the ACK — the outbox, delivery outcomes, the timeline — can be
derived again from what intake stored durably, and every effect it leads to carries an
idempotency key. So its commits need SQLite's crash safety, not an fsync each: with
`synchronous=NORMAL` in WAL mode a commit survives a crash of the engine and, on power loss
or an OS crash, only a suffix of the WAL can be lost — whole transactions, in commit order
(https://sqlite.org/pragma.html#pragma_synchronous, https://sqlite.org/wal.html). An fsync
held inside the write lock was also what made the intake's group commit wait behind the
worker (docs/benchmarks.md, "Intake first").

Not syncing at all would leave that suffix unbounded while intake is idle. Once a second
the worker fsyncs the WAL file itself, which is what SQLite's own FULL commit does: what a
power cut can undo is at most the last second of the worker's writes (and every intake
commit, still FULL, fsyncs whatever the worker wrote before it).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("parcours.store")


class WalSync:
    def __init__(self, database_path: str) -> None:
        self.wal = f"{database_path}-wal"
        self._seen: tuple[int, int] | None = None
        self.syncs = 0

    def sync(self) -> bool:
        """fsync the WAL if it changed since the last call; False when nothing was to do."""
        try:
            st = os.stat(self.wal)
        except FileNotFoundError:
            return False  # checkpointed and removed: the database file holds it all
        seen = (st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return False
        try:
            fd = os.open(self.wal, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._seen = seen
        self.syncs += 1
        return True
