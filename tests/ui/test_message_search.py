"""The message filters of the UI and API (engine/ui/messages.py `search`) on both stores:
what each filter returns, newest first and paged by id, through the indexes of migration
0013_prune (checked on SQLite's query plan: no filter reads every row)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from engine.store.database import Store
from engine.store.models import messages
from engine.ui.messages import Search, bare_patient_id, search

T0 = datetime(2026, 3, 1, tzinfo=UTC)
KEYS = ["H1&1.2&ISO|123", "INS|123", "H1&1.2&ISO|1234", "123", None]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    s.migrate()
    rows = []
    for i in range(60):
        mtype, trigger = [("ADT", "A01"), ("ORU", "R01"), ("ADT", "A03")][i % 3]
        rows.append({
            "channel": "main" if i % 2 else "lab", "received_at": T0 + timedelta(hours=i),
            "message_type": mtype, "trigger_event": trigger, "control_id": f"C{i}",
            "patient_key": KEYS[i % len(KEYS)], "size": 3, "truncated": 0, "raw": b"MSH",
            "status": "done" if i % 4 else "error"})
    with s.engine.begin() as conn:
        conn.execute(insert(messages), rows)
    yield s
    s.close()


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["control_id"] for r in rows]


def test_each_filter(store: Store) -> None:
    assert _ids(search(store, Search(control_id="C7"))) == ["C7"]
    bare = search(store, Search(patient="123"), limit=100)
    assert {r["patient_key"] for r in bare} == {"H1&1.2&ISO|123", "INS|123", "123"}
    assert {r["patient_key"] for r in search(store, Search(patient="INS|123"))} == {"INS|123"}
    assert search(store, Search(patient="23")) == []
    oru = search(store, Search(type="ORU^R01"), limit=100)
    assert len(oru) == 20 and {r["message_type"] for r in oru} == {"ORU"}
    assert len(search(store, Search(type="adt"), limit=100)) == 40
    day = search(store, Search(since=T0 + timedelta(hours=10), until=T0 + timedelta(hours=13)))
    assert _ids(day) == ["C13", "C12", "C11", "C10"]  # newest first, both ends included
    both = search(store, Search(since=T0, until=T0 + timedelta(hours=5), type="ORU"))
    assert _ids(both) == ["C4", "C1"]
    assert {r["status"] for r in search(store, Search(status="error"), limit=100)} == {"error"}
    assert len(search(store, Search(channel="lab", status="error"), limit=100)) == 15


def test_pages_are_newest_first_and_do_not_overlap(store: Store) -> None:
    first = search(store, Search(), limit=25)
    assert _ids(first) == [f"C{i}" for i in range(59, 34, -1)]
    second = search(store, Search(before_id=first[-1]["id"]), limit=25)
    assert _ids(second) == [f"C{i}" for i in range(34, 9, -1)]


def test_sqlite_plans_use_indexes(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'p.db'}")
    s.migrate()
    cases = {
        "patient": (messages.c.patient_key == "1") | (bare_patient_id("sqlite") == "1"),
        "type": (messages.c.message_type == "ORU") & (messages.c.trigger_event == "R01"),
        "channel": messages.c.channel == "main",
    }  # a date range may be walked newest first by id, which stops after a page: measured
    with s.engine.connect() as conn:
        for name, cond in cases.items():
            q = select(messages.c.id).where(cond).order_by(messages.c.id.desc()).limit(50)
            sql = str(q.compile(s.engine, compile_kwargs={"literal_binds": True}))
            plan = " ".join(r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "INDEX" in plan, (name, plan)
    s.close()
