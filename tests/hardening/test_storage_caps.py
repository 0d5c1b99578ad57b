"""A refused message keeps its head, not all of it; the daily volume alarm warns once."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from engine.intake.stored_bytes import SenderVolume, keep_head
from engine.store.database import Arrival
from engine.store.models import messages
from tests.conftest import routes_text
from tests.intake.test_ack_rules import msg


def rows(eng: Any) -> list[dict[str, Any]]:
    with eng.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(
            messages.c.control_id, messages.c.status, messages.c.size, messages.c.truncated,
            messages.c.raw).order_by(messages.c.id)).mappings()]


async def test_refused_frames_and_files_keep_their_head_accepted_ones_all(
        make_engine: Any, store_url: str, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    eng = await make_engine(routes_text(channels=(
        "  main:\n    type: mllp\n    host: 127.0.0.1\n    port: 0\n"
        "    max_stored_bytes: 4096\n    accept: {processing_ids: [P]}\n"
        f"  drop:\n    type: folder\n    path: {inbox}\n    poll_interval: 0.1\n"
        "    settle_seconds: 0\n    max_stored_bytes: 65536\n")), store_url=store_url)
    note = "NTE|1||" + "x" * 200_000
    refused = (msg("REFUSED", processing="D") + note + "\r").encode()
    accepted = (msg("KEPT") + note + "\r").encode()
    assert b"MSA|AR" in await eng.send(refused)
    assert b"MSA|AA" in await eng.send(accepted)
    (inbox / "junk.hl7").write_bytes(b"not hl7 " * 100_000)
    for _ in range(200):
        if (inbox / "error" / "junk.hl7.reason").exists():
            break
        await asyncio.sleep(0.05)
    got = {r["control_id"] or "file": r for r in rows(eng)}
    assert got["REFUSED"]["status"] == "rejected" and len(got["REFUSED"]["raw"]) == 4096
    assert got["REFUSED"]["size"] == len(refused) and got["REFUSED"]["truncated"] == 1
    assert bytes(got["REFUSED"]["raw"]) == refused[:4096]
    assert len(got["KEPT"]["raw"]) == len(accepted) and got["KEPT"]["truncated"] == 0
    assert len(got["file"]["raw"]) == 65536 and got["file"]["size"] == 800_000


def test_keep_head_leaves_accepted_messages_whole() -> None:
    a = Arrival(channel="c", raw=b"x" * 5000, status="accepted")
    keep_head(a, 1024)
    assert len(a.raw) == 5000 and not a.truncated
    r = Arrival(channel="c", raw=b"x" * 5000, status="rejected")
    keep_head(r, 1024)
    assert len(r.raw) == 1024 and r.truncated and r.size == 5000


def test_volume_alarm_once_per_sender_and_day(caplog: pytest.LogCaptureFixture) -> None:
    vol = SenderVolume("main", 1000)
    day = datetime(2026, 12, 1, 10, tzinfo=UTC)
    with caplog.at_level(logging.WARNING, logger="parcours.intake"):
        fired = [vol.add("LAB^X", 400, day) for _ in range(5)]
        assert fired == [False, False, True, False, False]
        assert vol.add("HIS^Y", 400, day) is False
        assert vol.add("LAB^X", 400, day + timedelta(days=1)) is False  # a new day
        assert vol.add("LAB^X", 700, day + timedelta(days=1)) is True
    lines = [r for r in caplog.records if "daily volume" in r.getMessage()]
    assert len(lines) == 2 and all("LAB^X" not in r.getMessage() for r in lines)
    assert vol.alarms == 2


async def test_volume_alarm_on_metrics(make_engine: Any, tmp_path: Path) -> None:
    eng = await make_engine(routes_text(channels=(
        "  main:\n    type: mllp\n    host: 127.0.0.1\n    port: 0\n"
        "    daily_volume_alarm_bytes: 1000\n")), http=True)
    for i in range(6):
        assert b"MSA|AA" in await eng.send(msg(f"V-{i}").encode())
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient() as c:
        body = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
    assert 'parcours_sender_volume_alarms_total{channel="main"} 1.0' in body
