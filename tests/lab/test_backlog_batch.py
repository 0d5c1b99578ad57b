"""The mapping backlog written per router batch (issue #12): the counts a batch leaves are the
ones recording each message alone left, a replayed message counts once, a new code appears
once however many messages of the batch carry it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine.routing.backlog import record, record_many
from engine.store.database import Arrival, Store
from engine.store.models import mapping_backlog, mapping_backlog_messages


def _entry(code: str, sender: str = "LAB-A") -> dict[str, Any]:
    return {"sender": sender, "performing_lab": "", "code": code, "coding_system": "L",
            "text": f"test {code}", "unit": "mmol/L", "example_value": "6.1",
            "reason": "unmapped_code"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = (f"sqlite:///{tmp_path / 'p.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    s = Store(url)
    s.migrate()
    yield s
    s.close()


def _messages(store: Store, n: int) -> list[int]:
    saved = store.save_arrivals([Arrival(channel="c", raw=f"MSH|^~\\&|{i}".encode(),
                                         status="accepted") for i in range(n)])
    return [s.id for s in saved]


def _state(store: Store) -> tuple[dict[str, int], set[tuple[str, int]]]:
    with store.engine.connect() as conn:
        counts = {r.code: int(r.count) for r in conn.execute(select(mapping_backlog))}
        links = {(code, int(m)) for code, m in conn.execute(
            select(mapping_backlog.c.code, mapping_backlog_messages.c.message_id)
            .join(mapping_backlog, mapping_backlog.c.id == mapping_backlog_messages.c.backlog_id))}
    return counts, links


def test_a_batch_counts_what_one_message_at_a_time_counted(store: Store) -> None:
    m1, m2, m3, m4 = _messages(store, 4)
    with store.engine.begin() as conn:
        record(conn, m1, [_entry("A")])  # an earlier batch saw A in m1
    batch = [(m1, [_entry("A")]),                    # m1 again (a replay): counted once
             (m2, [_entry("A"), _entry("A"), _entry("B")]),  # A twice in one message
             (m3, [_entry("B"), _entry("C", sender="LAB-B")]),
             (m4, [_entry("A")])]
    with store.engine.begin() as conn:
        new = record_many(conn, batch)
    assert new == 2  # B and C
    counts, links = _state(store)
    assert counts == {"A": 3, "B": 2, "C": 1}
    assert links == {("A", m1), ("A", m2), ("A", m4), ("B", m2), ("B", m3), ("C", m3)}
    with store.engine.begin() as conn:  # the whole batch replayed: nothing changes
        assert record_many(conn, batch) == 0
    assert _state(store) == (counts, links)
