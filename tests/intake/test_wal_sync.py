"""The worker's once-a-second WAL fsync (engine/store/wal_sync.py) on a real SQLite file."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from engine.store.wal_sync import WalSync


def test_it_fsyncs_the_wal_only_when_the_wal_changed(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "parcours.db"
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    wal = WalSync(str(db))
    assert wal.sync() is False  # no database, no WAL yet
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert Path(f"{db}-wal").stat().st_size > 0
    assert wal.sync() is True and len(synced) == 1
    assert wal.sync() is False and len(synced) == 1  # nothing new since
    conn.execute("INSERT INTO t VALUES (2)")
    assert wal.sync() is True and len(synced) == 2
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()  # the last connection removes the WAL
    assert not Path(f"{db}-wal").exists()
    assert wal.sync() is False and wal.syncs == 2
