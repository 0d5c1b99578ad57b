"""Folder channels: single messages, several, batches, CDA; archive/error; exactly-once."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine.store.models import inbound_files, messages
from tests.conftest import corpus, routes_text
from tests.intake.test_ack_rules import msg


def folder_routes(path: Path, settle: float = 0.0) -> str:
    return routes_text(
        "  main:\n    type: mllp\n    host: 127.0.0.1\n    port: 0\n"
        f"  drop:\n    type: folder\n    path: {path}\n    poll_interval: 0.05\n"
        f"    settle_seconds: {settle}\n"
    )


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def stored(eng: Any) -> list[dict[str, Any]]:
    with eng.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(messages).order_by(messages.c.id)).mappings()]


async def test_messages_batches_and_cda_are_taken_and_archived(
    make_engine: Any, store_url: str, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "one.hl7").write_bytes(msg("F-1").encode())
    (inbox / "two.hl7").write_bytes((msg("F-2", sep="\n") + "\n" + msg("F-3", sep="\n")).encode())
    shutil.copy(corpus("hl7v2", "reportstream-batch", "CSV_to_HL7",
                       "sample-batch-pdi-20210608-0001.hl7"), inbox / "batch.hl7")
    shutil.copy(corpus("cda", "ans-examples", "BIO-CR-BIO_2024.01_TSH_1.xml"), inbox / "tsh.xml")
    (inbox / "notes.txt").write_text("not for us")
    eng = await make_engine(folder_routes(inbox), store_url=store_url)
    await wait_for(lambda: len(list((inbox / "archive").iterdir())) == 4)
    rows = stored(eng)
    assert len(rows) == 1 + 2 + 20 + 1
    assert {r["status"] for r in rows} == {"accepted"}
    assert {r["channel"] for r in rows} == {"drop"}
    cda = [r for r in rows if r["message_type"] == "CDA"][0]
    assert cda["control_id"] == "1.2.250.1.213.1.1.1.55.2024.9.1"
    assert cda["patient_key"] == "1.2.3.4.567.8.9.10|1234567890121"
    assert (inbox / "notes.txt").exists()  # not matching the patterns: left alone
    assert not list((inbox / "error").iterdir())


async def test_bad_files_go_to_error_with_reason_and_are_stored(
    make_engine: Any, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "garbage.hl7").write_bytes(b"\x00\x01 not hl7 at all")
    (inbox / "mixed.hl7").write_bytes((msg("OK-1") + msg("", processing="P")).encode())
    (inbox / "evil.xml").write_bytes(
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'
    )
    (inbox / "broken.xml").write_bytes(b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id")
    eng = await make_engine(folder_routes(inbox))
    err = inbox / "error"
    await wait_for(lambda: len(list(err.glob("*.reason"))) == 4)
    reasons = {p.name: p.read_text() for p in err.glob("*.reason")}
    assert "no MSH segment" in reasons["garbage.hl7.reason"]
    assert "message 2" in reasons["mixed.hl7.reason"] and "MSH-10" in reasons["mixed.hl7.reason"]
    assert "DOCTYPE" in reasons["evil.xml.reason"]
    assert "well-formed" in reasons["broken.xml.reason"]
    rows = stored(eng)
    # Nothing lost: every file's bytes are in the store, bad ones included.
    assert len(rows) == 1 + 2 + 1 + 1
    assert [r["status"] for r in rows if r["control_id"] == "OK-1"] == ["accepted"]
    assert (err / "garbage.hl7").read_bytes() == b"\x00\x01 not hl7 at all"


async def test_file_still_being_written_is_not_taken(make_engine: Any, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    eng = await make_engine(folder_routes(inbox, settle=0.6))
    path = inbox / "slow.hl7"
    body = msg("SLOW-1").encode()
    with path.open("wb") as f:
        for i in range(0, len(body), 20):
            f.write(body[i : i + 20])
            f.flush()
            await asyncio.sleep(0.1)  # a writer slower than the poll interval
            assert not stored(eng)
    (inbox / "partial.hl7.part").write_bytes(b"MSH|")  # temp names are never taken
    await wait_for(lambda: len(stored(eng)) == 1)
    assert stored(eng)[0]["raw"] == body
    assert (inbox / "partial.hl7.part").exists()


async def test_restart_never_processes_twice_nor_forgets(
    make_engine: Any, store_url: str, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.hl7").write_bytes(msg("R-A").encode())
    eng = await make_engine(folder_routes(inbox), store_url=store_url,
                            home=tmp_path / "h1")
    await wait_for(lambda: (inbox / "archive" / "a.hl7").exists())
    await eng.engine.stop()
    # Crash between commit and move: the file is back in the inbox, its record exists.
    os.replace(inbox / "archive" / "a.hl7", inbox / "a.hl7")
    (inbox / "b.hl7").write_bytes(msg("R-B").encode())  # arrived while the engine was down
    eng2 = await make_engine(folder_routes(inbox), store_url=store_url, home=tmp_path / "h1")
    await wait_for(lambda: len(list((inbox / "archive").iterdir())) == 2)
    rows = stored(eng2)
    assert sorted(r["control_id"] for r in rows) == ["R-A", "R-B"]
    with eng2.store.engine.connect() as conn:
        assert conn.execute(select(inbound_files.c.name)).scalars().all().count("a.hl7") == 1
