"""Space comes back (issue #16): after a prune the SQLite file is smaller, in bytes. A file
created by an older version (no auto_vacuum) keeps its size until `parcours prune --vacuum`
rewrites it once, which the prune says."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.store.database import Store
from engine.store.prune import Pruner, sqlite_auto_vacuum
from engine.store.retention import from_config
from tests.retention.history import DeliverySpec, MessageSpec, write
from tests.test_cli import run

NOW = datetime.now(UTC)
ROUTES = """version: 1
channels: {main: {type: mllp, port: 0}}
destinations: {}
routes: []
retention:
  keep: {payload_days: 1}
"""


def _fill(store: Store, n: int = 1200, size: int = 20000) -> None:
    specs = [MessageSpec(status="done", age=30, size=size, deliveries=[
        DeliverySpec("delivered", delivered_age=29, attempts=[29])]) for _ in range(n)]
    with store.engine.begin() as conn:
        write(conn, specs, NOW)


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


@pytest.mark.parametrize("size", [2000, 20000])  # kept inside its page / overflowing it
def test_prune_shrinks_a_new_sqlite_file(tmp_path: Path, size: int) -> None:
    db = tmp_path / "parcours.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    assert sqlite_auto_vacuum(store) == 2  # INCREMENTAL, set before the first table
    _fill(store, size=size)
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    before = _file_bytes(db)
    report = Pruner(store, from_config({"keep": {"payload_days": 1}})).run(now=NOW)
    store.close()
    after = _file_bytes(db)
    assert report.payloads == 1200 and report.deliveries_emptied == 1200
    assert report.payload_bytes >= 1200 * 2 * size  # raw bytes and a delivered payload each
    # The rows stay (metadata, indexes): the file shrinks by most of the bytes dropped.
    print(f"size {size}: {before} -> {after} bytes, {report.payload_bytes} dropped")
    assert before - after >= 0.7 * report.payload_bytes, (before, after)
    assert report.bytes_freed == before - after
    # The metadata stays searchable.
    store = Store(f"sqlite:///{db}")
    from engine.ui.messages import Search, search

    assert len(search(store, Search(control_id="C7"))) == 1
    store.close()


def test_older_file_needs_one_vacuum_then_shrinks(tmp_path: Path) -> None:
    db = tmp_path / "parcours.db"
    with sqlite3.connect(db) as conn:  # as versions before issue #16 created it
        conn.execute("PRAGMA auto_vacuum=NONE")
        conn.execute("CREATE TABLE legacy_marker (x INTEGER)")
    store = Store(f"sqlite:///{db}")
    store.migrate()
    assert sqlite_auto_vacuum(store) == 0
    _fill(store, n=600)
    store.close()
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    url = f"sqlite:///{db}"
    before = _file_bytes(db)
    res = run("prune", "--routes", str(routes), "--store-url", url)
    assert res.returncode == 0, res.stderr
    assert "removed raw bytes of 600 message(s)" in res.stdout
    assert "parcours prune --vacuum" in res.stdout  # says why the file did not shrink
    assert _file_bytes(db) >= before * 0.9
    res = run("prune", "--vacuum", "--routes", str(routes), "--store-url", url)
    assert res.returncode == 0, res.stderr
    assert "rewritten with auto_vacuum=INCREMENTAL" in res.stdout
    assert _file_bytes(db) < before / 3
    store = Store(url)
    assert sqlite_auto_vacuum(store) == 2
    store.close()
