"""`parcours prune` as an operator runs it, and the engine's scheduled pass: what is printed,
what changed in the store, and the errors (one line, non-zero exit, no traceback)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine.store.database import Store
from engine.store.models import deliveries, messages
from tests.intake.test_ack_rules import msg
from tests.retention.history import DeliverySpec, MessageSpec, write
from tests.test_cli import PARCOURS, run

NOW = datetime.now(UTC)
BASE = """version: 1
channels: {main: {type: mllp, port: 0}}
destinations: {}
routes: []
"""


@pytest.fixture
def history(store_url: str) -> list[int]:
    """Delivered 10 days ago, delivered 1 day ago, still pending, and a dead letter."""
    store = Store(store_url)
    store.migrate()
    specs = [
        MessageSpec("done", age=11, deliveries=[DeliverySpec("delivered", delivered_age=10)]),
        MessageSpec("done", age=2, deliveries=[DeliverySpec("delivered", delivered_age=1)]),
        MessageSpec("routed", age=12, deliveries=[DeliverySpec("pending")]),
        MessageSpec("failed", age=12, deliveries=[DeliverySpec("dead")]),
    ]
    with store.engine.begin() as conn:
        ids = write(conn, specs, NOW)
    store.close()
    return ids


def _raw(store_url: str) -> dict[int, bytes]:
    store = Store(store_url)
    with store.engine.connect() as conn:
        out = {r.id: bytes(r.raw) for r in conn.execute(select(messages.c.id, messages.c.raw))}
    store.close()
    return out


def _routes(tmp_path: Path, retention: str = "") -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(BASE + retention)
    return str(path)


def test_without_retention_nothing_is_removed(store_url: str, history: list[int],
                                              tmp_path: Path) -> None:
    before = _raw(store_url)
    res = run("prune", "--routes", _routes(tmp_path), "--store-url", store_url)
    assert res.returncode == 0, res.stderr
    assert "no retention rule is set; nothing is removed" in res.stdout
    assert _raw(store_url) == before


def test_dry_run_then_prune_by_policy(store_url: str, history: list[int],
                                      tmp_path: Path) -> None:
    routes = _routes(tmp_path, "retention:\n  keep: {payload_days: 5}\n")
    before = _raw(store_url)
    res = run("prune", "--dry-run", "--routes", routes, "--store-url", store_url)
    assert res.returncode == 0, res.stderr
    assert "dry run: nothing was changed" in res.stdout
    assert "would remove raw bytes of 1 message(s) and 1 delivered payload(s)" in res.stdout
    assert _raw(store_url) == before
    res = run("prune", "--routes", routes, "--store-url", store_url)
    assert res.returncode == 0, res.stderr
    assert "removed raw bytes of 1 message(s) and 1 delivered payload(s)" in res.stdout
    assert "freed" in res.stdout or "VACUUM" in res.stdout
    after = _raw(store_url)
    old, recent, pending, dead = history
    assert after[old] == b""
    assert after[recent] == before[recent]
    assert after[pending] == before[pending] and after[dead] == before[dead]
    # A pruned message cannot be routed again, and the operator is told why.
    res = subprocess.run([*PARCOURS, "replay", str(old), "--routes", routes],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PARCOURS_STORE_URL": store_url})
    assert res.returncode == 1
    assert res.stderr.strip() == (f"message {old}: its raw bytes were removed by retention "
                                  "(parcours prune); it cannot be routed again")
    # The metadata stays searchable.
    store = Store(store_url)
    from engine.ui.messages import Search, search

    found = search(store, Search(control_id="C0"))
    store.close()
    assert [r["id"] for r in found] == [old] and found[0]["status"] == "done"


def test_settled_before_date(store_url: str, history: list[int], tmp_path: Path) -> None:
    before = _raw(store_url)
    date = (NOW - timedelta(days=5)).date().isoformat()
    res = run("prune", "--settled-before", date, "--store-url", store_url)
    assert res.returncode == 0, res.stderr
    assert "removed raw bytes of 1 message(s)" in res.stdout
    after = _raw(store_url)
    old, recent, pending, dead = history
    assert after[old] == b"" and after[recent] == before[recent]
    assert after[pending] == before[pending] and after[dead] == before[dead]
    store = Store(store_url)
    with store.engine.connect() as conn:
        payloads = dict(conn.execute(select(deliveries.c.message_id, deliveries.c.payload)).all())
    store.close()
    assert bytes(payloads[old]) == b"" and bytes(payloads[pending]) != b""
    assert bytes(payloads[dead]) != b""


def test_errors_are_one_line(store_url: str, tmp_path: Path) -> None:
    res = run("prune", "--settled-before", "last tuesday", "--store-url", store_url)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "is not an ISO date" in res.stderr
    bad = _routes(tmp_path, "retention:\n  keep: {payload_days: -1}\n")
    res = run("prune", "--routes", bad, "--store-url", store_url)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "routes.yaml:6:" in res.stderr  # file:line:column of the bad value
    res = run("prune", "--routes", str(tmp_path / "missing.yaml"), "--store-url", store_url)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    if store_url.startswith("postgresql"):
        res = run("prune", "--vacuum", "--routes", _routes(tmp_path), "--store-url", store_url)
        assert res.returncode == 2 and "--vacuum is for SQLite" in res.stderr


async def test_engine_prunes_on_its_schedule(make_engine: Any, store_url: str,
                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    text = f"""version: 1
channels: {{main: {{type: mllp, host: 127.0.0.1, port: 0}}}}
destinations:
  files: {{type: file, path: "{out}", filename: "{{message_id}}.hl7"}}
routes:
  - {{name: all, to: [files]}}
retention:
  every_minutes: 0.01
  keep: {{payload_days: 0}}
"""
    eng = await make_engine(text, store_url=store_url, route=True)
    await eng.send(msg("SCHED-1").encode())
    for _ in range(200):
        row = eng.store.get_message(1)
        if row is not None and row["pruned_at"] is not None:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the scheduled pass did not prune the delivered message")
    assert row["status"] == "done" and bytes(row["raw"]) == b""
    assert row["control_id"] == "SCHED-1"
    assert (out / "1.hl7").read_bytes().startswith(b"MSH|")  # delivered before the prune
