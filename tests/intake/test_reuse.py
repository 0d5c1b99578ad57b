"""Reused control ids (issue #15), end to end on both stores: what the sender reads in its
ACK over MLLP, what the router makes of each message, what an operator sees (message list,
/metrics, the CLI), and the folder channel's CDA and HL7 files.

An identical resend (MSH-7 aside) gets the original ACK back and is not processed again;
new content under a seen MSH-10 is a new message, processed and flagged, or refused AR/CR
with ERR 205 on a channel that says so. Never AA-and-dropped.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from connectors.mllp.client import MLLPClient
from engine.store.models import deliveries, messages
from tests.conftest import corpus
from tests.intake.test_ack_rules import msg, segments
from tests.intake.test_corpus import REFUSED
from transformers.hl7.ack import read_ack
from transformers.hl7.batch import split_messages
from transformers.hl7.header import read_header

ANS_MDM = ("hl7v2", "ans", "Vague_2", "Trans_Doc-CDA-HL7V2",
           "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1", "MDM")


def routes(out: Path, inbox: Path) -> str:
    return f"""\
version: 1
channels:
  main: {{type: mllp, host: 127.0.0.1, port: 0}}
  strict: {{type: mllp, host: 127.0.0.1, port: 0, on_reused_control_id: refuse}}
  drop: {{type: folder, path: "{inbox}/drop", poll_interval: 0.05, settle_seconds: 0}}
  drop-strict: {{type: folder, path: "{inbox}/strict", poll_interval: 0.05, settle_seconds: 0,
                 on_reused_control_id: refuse}}
destinations:
  files: {{type: file, path: "{out}", filename: "{{message_id}}.{{ext}}"}}
routes:
  - name: everything
    to: [files]
"""


@pytest.fixture
async def eng(make_engine: Any, store_url: str, tmp_path: Path) -> Any:
    e = await make_engine(routes(tmp_path / "out", tmp_path / "in"), store_url=store_url,
                          route=True, http=True)
    e.out = tmp_path / "out"
    e.inbox = tmp_path / "in"
    return e


def stored(eng: Any) -> list[dict[str, Any]]:
    with eng.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(messages.c.id, messages.c.channel, messages.c.control_id,
                   messages.c.status, messages.c.duplicate_of, messages.c.reuse_of,
                   messages.c.ack_code, messages.c.error, messages.c.message_type)
            .order_by(messages.c.id)).mappings()]


def delivered(eng: Any) -> dict[int, int]:
    """message id -> deliveries delivered."""
    with eng.store.engine.connect() as conn:
        out: dict[int, int] = {}
        for mid, status in conn.execute(select(deliveries.c.message_id, deliveries.c.status)):
            if status == "delivered":
                out[mid] = out.get(mid, 0) + 1
        return out


async def settled(eng: Any, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Wait until `count` messages are stored and none waits for the router or a delivery."""
    rows: list[dict[str, Any]] = []
    for _ in range(int(timeout / 0.05)):
        rows = stored(eng)
        if len(rows) >= count and all(r["status"] not in ("accepted", "routed") for r in rows):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"not settled: {rows}")


def http(eng: Any) -> httpx.AsyncClient:
    port = int(eng.engine._http.servers[0].sockets[0].getsockname()[1])
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)


def with_msh7(raw: str, stamp: str) -> str:
    fields = raw.split("|")
    fields[6] = stamp
    return "|".join(fields)


async def test_identical_and_msh7_only_resends_get_the_original_ack(eng: Any) -> None:
    raw = msg("RS-1")
    first = await eng.send(raw.encode())
    again = await eng.send(raw.encode())
    later = await eng.send(with_msh7(raw, "20261125121500").encode())
    crlf = await eng.send(with_msh7(raw, "20261125121600").replace("\r", "\r\n").encode())
    assert again == first and later == first and crlf == first  # byte for byte
    rows = await settled(eng, 4)
    assert [r["status"] for r in rows] == ["done", "duplicate", "duplicate", "duplicate"]
    assert all(r["duplicate_of"] == rows[0]["id"] and r["reuse_of"] is None for r in rows[1:])
    assert delivered(eng) == {rows[0]["id"]: 1}  # processed once
    assert [p.name for p in eng.out.iterdir()] == [f"{rows[0]['id']}.hl7"]


async def test_reused_control_id_is_processed_and_flagged(eng: Any) -> None:
    first = await eng.send(msg("RU-1").encode())
    reused = await eng.send(msg("RU-1", name="MARTIN^PAUL").encode())
    code, control_id, _ = read_ack(reused)
    assert (code, control_id) == ("AA", "RU-1")
    assert reused != first  # its own ACK, not the first message's
    resend_of_reuse = await eng.send(
        with_msh7(msg("RU-1", name="MARTIN^PAUL"), "20261126080000").encode())
    assert resend_of_reuse == reused
    rows = await settled(eng, 3)
    one, two, three = rows
    assert (one["status"], two["status"], three["status"]) == ("done", "done", "duplicate")
    assert two["reuse_of"] == one["id"] and two["duplicate_of"] is None
    assert three["duplicate_of"] == two["id"]
    assert delivered(eng) == {one["id"]: 1, two["id"]: 1}
    assert b"MARTIN^PAUL" in (eng.out / f"{two['id']}.hl7").read_bytes()

    async with http(eng) as client:
        metrics = (await client.get("/metrics")).text
        assert 'parcours_control_id_reuses_total{channel="main",outcome="processed"} 1.0' in metrics
        assert 'parcours_channel_duplicates_total{channel="main"} 1.0' in metrics
        snap = (await client.get("/api/channels")).json()["main"]
        assert (snap["control_id_reuses"], snap["duplicates"]) == (1, 1)
        # The operator's message list: filter on the flag, the flag links to the first.
        from tests.ui.conftest import login
        from tests.ui.timeline_support import create_account

        await login(client, create_account(eng.engine, "op-1", "operator"))
        page = (await client.get("/ui/messages", params={"flag": "reused"})).text
        ids = [int(i) for i in re.findall(r'<a href="/ui/messages/(\d+)">\d+</a>', page)]
        assert ids == [two["id"]]
        assert f'href="/ui/messages/{one["id"]}"' in page and "reused id" in page
        detail = (await client.get(f"/ui/messages/{two['id']}")).text
        assert "processed as a new message" in detail
        dash = (await client.get("/ui/api/dashboard")).json()
        main = next(c for c in dash["channels"] if c["name"] == "main")
        assert (main["reuses"], main["duplicates"]) == (1, 1)


async def test_refusing_channel_answers_ar_or_cr_with_err_205(eng: Any) -> None:
    async with MLLPClient("127.0.0.1", eng.port("strict")) as c:
        first = await c.send(msg("RF-1").encode())
        assert read_ack(first)[0] == "AA"
        assert await c.send(msg("RF-1").encode()) == first  # a resend is still a resend
        refused = await c.send(msg("RF-1", name="MARTIN^PAUL").encode())
        s = segments(refused)
        assert s["MSA"][1:3] == ["AR", "RF-1"]
        assert s["ERR"][3].split("^")[0] == "205"  # ERR-3, HL7 table 0357
        assert s["ERR"][2].startswith("MSH^1^10")  # ERR-2: where
        assert "different content" in s["ERR"][8]  # ERR-8: for a human
        # Enhanced mode (MSH-15 AL): the commit ACK says CR.
        await c.send(msg("RF-2", accept="AL").encode())
        cr = await c.send(msg("RF-2", accept="AL", name="MARTIN^PAUL").encode())
        assert segments(cr)["MSA"][1] == "CR" and segments(cr)["ERR"][3].startswith("205^")
    rows = await settled(eng, 5)
    by_cid = [(r["control_id"], r["status"], r["ack_code"]) for r in rows]
    assert by_cid == [("RF-1", "done", "AA"), ("RF-1", "duplicate", "AA"),
                      ("RF-1", "rejected", "AR"), ("RF-2", "done", "CA"),
                      ("RF-2", "rejected", "CR")]
    assert rows[2]["reuse_of"] == rows[0]["id"] and rows[4]["reuse_of"] == rows[3]["id"]
    assert set(delivered(eng)) == {rows[0]["id"], rows[3]["id"]}  # refused ones: nothing
    async with http(eng) as client:
        metrics = (await client.get("/metrics")).text
        assert 'parcours_control_id_reuses_total{channel="strict",outcome="refused"} 2.0' in metrics


async def test_fhir_converter_samples_that_reuse_control_ids_are_all_processed(
    eng: Any,
) -> None:
    """101 of these samples reuse MSG00001 & co: each one with new content is processed;
    only a sample identical to an earlier one (MSH-7 aside) is a resend."""
    base = corpus("hl7v2", "fhir-converter")
    seen: dict[tuple[str, str, str], set[bytes]] = {}
    resends = answered = 0
    for path in sorted(base.iterdir()):
        for raw in split_messages(path.read_bytes()).messages:
            h = read_header(raw)
            # One connection each: a message sent NE/ER leaves no reply to pair with.
            async with MLLPClient("127.0.0.1", eng.port(), ack_timeout=10) as c:
                if h.accept_ack_type in ("NE", "ER"):
                    await c.send_no_reply(raw)
                else:
                    code, cid, _ = read_ack(await c.send(raw))
                    expected = ("AE",) if path.name in REFUSED else ("AA", "CA")
                    assert (code, cid) in {(x, h.control_id) for x in expected}, path
                    answered += 1
            key = (h.sending_application, h.sending_facility, h.control_id)
            body = _content(raw)
            resends += body in seen.get(key, set())
            seen.setdefault(key, set()).add(body)
    rows = await settled(eng, 139, timeout=120)
    assert answered >= 130
    assert sum(r["status"] == "duplicate" for r in rows) == resends
    reused = [r for r in rows if r["reuse_of"] is not None]
    assert len(reused) >= 90  # the samples the old rule kept "not processed"
    assert all(r["status"] in ("done", "failed") for r in reused)
    processed = [r for r in rows if r["status"] != "duplicate"]
    assert len(processed) == 139 - resends
    assert set(delivered(eng)) == {r["id"] for r in processed if r["status"] == "done"}


def _content(raw: bytes) -> bytes:
    """The test's own reading of "the same message": MSH-7 blanked, terminators as CR."""
    text = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").rstrip(b"\r")
    msh, _, rest = text.partition(b"\r")
    fields = msh.split(b"|")
    fields[6] = b""
    return b"|".join(fields) + b"\r" + rest


async def test_ans_mdm_replacement_and_deletion_under_the_same_control_id(eng: Any) -> None:
    """ANS CI-SIS: the T02 report, its T10 replacement and its T04 deletion all carry MSH-10
    015 from RIS-Y: three messages to process, the last two flagged."""
    base = corpus(*ANS_MDM)
    files = [base / "Transmission_initiale_MDM" / "message_MDM_CR_Radio_INIT_N1.er7",
             base / "Remplacement_MDM" / "message_MDM_CR_Radio_RPLC_N1.er7",
             base / "Suppression_MDM" / "message_MDM_CR_Radio_DEL_N1.er7"]
    acks = [read_ack(await eng.send(f.read_bytes()))[:2] for f in files]
    assert acks == [("AA", "015")] * 3
    rows = await settled(eng, 3)
    assert [r["status"] for r in rows] == ["done"] * 3
    assert [r["reuse_of"] for r in rows] == [None, rows[0]["id"], rows[0]["id"]]
    assert len(delivered(eng)) == 3


async def wait_moved(folder: Path, name: str, timeout: float = 15.0) -> Path:
    for _ in range(int(timeout / 0.05)):
        if (folder / name).exists():
            return folder / name
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never reached {folder}: {list(folder.parent.rglob('*'))}")


async def test_cda_with_a_reused_document_id_in_folder_channels(eng: Any) -> None:
    cda = corpus("cda", "ans-examples", "LDL-SES_2022.01.xml").read_bytes()
    other = cda.replace(b"<title>Motif de l'hospitalisation</title>",
                        b"<title>Motif de l'hospitalisation (corrig\xc3\xa9)</title>")
    assert other != cda
    drop, strict = eng.inbox / "drop", eng.inbox / "strict"
    await wait_moved(eng.inbox, "drop")
    for folder in (drop, strict):
        (folder / "a.xml").write_bytes(cda)
        await wait_moved(folder / "archive", "a.xml")
        (folder / "b.xml").write_bytes(cda)  # the same document again: a resend
        await wait_moved(folder / "archive", "b.xml")
        (folder / "c.xml").write_bytes(other)  # same custodian + id, other bytes
    await wait_moved(drop / "archive", "c.xml")
    await wait_moved(strict / "error", "c.xml")
    reason = (strict / "error" / "c.xml.reason").read_text()
    assert "ClinicalDocument/id" in reason and "different content" in reason
    rows = sorted(await settled(eng, 6), key=lambda r: (r["channel"], r["id"]))
    got = [(r["channel"], r["status"]) for r in rows]
    assert got == [("drop", "done"), ("drop", "duplicate"), ("drop", "done"),
                   ("drop-strict", "done"), ("drop-strict", "duplicate"),
                   ("drop-strict", "rejected")]
    assert rows[2]["reuse_of"] == rows[0]["id"] and rows[5]["reuse_of"] == rows[3]["id"]
    assert set(delivered(eng)) == {rows[0]["id"], rows[2]["id"], rows[3]["id"]}
    assert "corrig" in (eng.out / f"{rows[2]['id']}.xml").read_text("utf-8")


async def test_hl7_file_with_a_reused_control_id(eng: Any) -> None:
    drop, strict = eng.inbox / "drop", eng.inbox / "strict"
    await wait_moved(eng.inbox, "strict")
    for folder in (drop, strict):
        (folder / "1.hl7").write_bytes(msg("F-1").encode())
        await wait_moved(folder / "archive", "1.hl7")
        (folder / "2.hl7").write_bytes(msg("F-1", name="MARTIN^PAUL").encode())
    await wait_moved(drop / "archive", "2.hl7")
    await wait_moved(strict / "error", "2.hl7")
    assert "MSH-10 F-1" in (strict / "error" / "2.hl7.reason").read_text()
    rows = sorted(await settled(eng, 4), key=lambda r: (r["channel"], r["id"]))
    assert [(r["channel"], r["status"]) for r in rows] == [
        ("drop", "done"), ("drop", "done"), ("drop-strict", "done"),
        ("drop-strict", "rejected")]
    assert rows[1]["reuse_of"] == rows[0]["id"] and rows[3]["reuse_of"] == rows[2]["id"]
    async with http(eng) as client:
        metrics = (await client.get("/metrics")).text
    assert 'parcours_control_id_reuses_total{channel="drop",outcome="processed"} 1.0' in metrics
    assert ('parcours_control_id_reuses_total{channel="drop-strict",outcome="refused"} 1.0'
            in metrics)
