"""Hostile CDA, by folder and by MDM^T02 over MLLP: refused with a reason, served by no API.

The documents hide a DOCTYPE (external entity, external parameter entity) where a byte scan
does not look — behind a 70 KB comment, in UTF-16, in UTF-32 — or use XInclude. The parser
(safexml) decodes them like any document and refuses them from what it parsed.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from engine.store.models import deliveries, messages
from engine.timeline import auth
from engine.timeline.models import documents
from safexml import UnsafeXML, parse
from tests.conftest import corpus, routes_text

CDA = corpus("hl7v2", "ans", "Vague_2", "Trans_Doc-CDA-HL7V2",
             "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1", "MDM", "Transmission_initiale_MDM",
             "CR_Radio_CDAN1_v1.XML")
MDM = CDA.with_name("message_MDM_CR_Radio_INIT_N1_Base64.er7")
XXE = '<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
PARAMETER = '<!DOCTYPE ClinicalDocument [<!ENTITY % ext SYSTEM "http://127.0.0.1:9/x.dtd"> %ext;]>'


def _cda_text() -> str:
    text = CDA.read_bytes().decode("utf-8")
    return text[text.index("<ClinicalDocument"):]


def hostile(kind: str) -> bytes:
    """The corpus CDA made hostile in one way; its title becomes &xxe; where it has one."""
    body = _cda_text()
    with_entity = body.replace("<title>Radio de hanche</title>", "<title>&xxe;</title>", 1)
    if kind == "comment-70k":
        return ('<?xml version="1.0" encoding="UTF-8"?>\n<!--' + "x" * 70_000 + "-->\n"
                + XXE + "\n" + with_entity).encode("utf-8")
    if kind == "utf-16":
        return ('<?xml version="1.0" encoding="UTF-16"?>\n' + XXE + "\n" + with_entity
                ).encode("utf-16")
    if kind == "utf-32":
        return ('<?xml version="1.0" encoding="UTF-32"?>\n' + XXE + "\n" + with_entity
                ).encode("utf-32")
    if kind == "parameter-entity":
        return ('<?xml version="1.0"?>\n' + PARAMETER + "\n" + body).encode("utf-8")
    if kind == "xinclude":
        inc = ('<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd"'
               ' parse="text"/>')
        return ('<?xml version="1.0"?>\n' + body.replace("<title>Radio de hanche</title>",
                                                          f"<title>{inc}</title>", 1)
                ).encode("utf-8")
    raise AssertionError(kind)


KINDS = ["comment-70k", "utf-16", "utf-32", "parameter-entity", "xinclude"]
REASON = {"comment-70k": "doctype", "utf-16": "doctype", "utf-32": "doctype",
          "parameter-entity": "doctype", "xinclude": "xinclude"}


@pytest.mark.parametrize("kind", KINDS)
def test_parser_refuses_each_with_its_reason(kind: str) -> None:
    with pytest.raises(UnsafeXML) as refused:
        parse(hostile(kind))
    assert refused.value.reason == REASON[kind]
    assert "passwd" not in str(refused.value)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
def test_the_same_document_without_doctype_parses_in_every_encoding(encoding: str) -> None:
    decl = f'<?xml version="1.0" encoding="{encoding.upper()}"?>\n'
    root = parse((decl + _cda_text()).encode(encoding))
    assert root.findtext("{urn:hl7-org:v3}title") == "Radio de hanche"


def test_an_entity_reference_without_declaration_is_not_well_formed() -> None:
    with pytest.raises(UnsafeXML) as refused:
        parse(b"<x>&xxe;</x>")
    assert refused.value.reason == "not_well_formed"


def mdm_carrying(doc: bytes, control_id: str) -> bytes:
    lines = MDM.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    out = []
    for line in lines:
        if line.startswith(b"MSH|"):
            f = line.split(b"|")
            f[9] = control_id.encode()
            line = b"|".join(f)
        elif line.startswith(b"OBX|1|ED|"):
            f = line.split(b"|")
            f[5] = b"^text^XML^Base64^" + base64.b64encode(doc)
            line = b"|".join(f)
        out.append(line)
    return b"\r".join(x for x in out if x)


def engine_routes(inbox: Path) -> str:
    return routes_text(
        channels=("  main:\n    type: mllp\n    host: 127.0.0.1\n    port: 0\n"
                  f"  drop:\n    type: folder\n    path: {inbox}\n    poll_interval: 0.1\n"
                  "    settle_seconds: 0\n"),
        destinations="{timeline: {type: timeline}}",
        routes="""
  - {name: documents, when: {message_type: MDM}, transform: [mdm_events], to: [timeline]}
  - {name: files, when: {message_type: CDA}, transform: [cda_events], to: [timeline]}
""")


async def _until(check: Any, what: str, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not reached in time")


async def test_hostile_cda_by_folder_and_by_mdm_is_refused_and_served_by_no_api(
    make_engine: Any, store_url: str, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    eng = await make_engine(engine_routes(inbox), store_url=store_url, http=True, route=True)
    db = eng.store.engine
    for i, kind in enumerate(KINDS):
        (inbox / f"{kind}.xml").write_bytes(hostile(kind))
        ack = await eng.send(mdm_carrying(hostile(kind), f"HOSTILE-{i}"))
        # Stored, so acknowledged (design brief: an ACK means durable); refused on its route.
        assert b"MSA|AA" in ack

    reasons_dir = inbox / "error"
    await _until(lambda: reasons_dir.is_dir() and len(list(reasons_dir.glob("*.reason")))
                 == len(KINDS), "every file in error/ with a reason")
    for kind in KINDS:
        reason = (reasons_dir / f"{kind}.xml.reason").read_text()
        assert ("DOCTYPE" if REASON[kind] == "doctype" else "XInclude") in reason, reason
        assert "root:" not in reason  # nothing of /etc/passwd was read

    def dead() -> list[Any]:
        with db.connect() as conn:
            return conn.execute(select(deliveries.c.status, deliveries.c.last_error).where(
                deliveries.c.route == "documents")).all()

    await _until(lambda: len(dead()) == len(KINDS) and {r.status for r in dead()} == {"dead"},
                 "every MDM delivery dead-lettered")
    assert all(("DOCTYPE" in r.last_error or "XInclude" in r.last_error) for r in dead())
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(documents)).scalar() == 0
        files = conn.execute(select(messages.c.status, messages.c.error).where(
            messages.c.message_type == "CDA")).all()
    assert len(files) == len(KINDS) and {f.status for f in files} == {"rejected"}

    _, token = auth.add_user(db, "admin1", "admin")
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        found = (await c.get("/api/v1/patients",
                             params={"identifier": "INS|279035121518989"})).json()["patients"]
        for p in found:
            events = (await c.get(f"/api/v1/patients/{p['id']}/timeline")).json()["events"]
            assert not [e for e in events if e["type"] == "document"]
        for document_id in (1, 2, 3):
            assert (await c.get(f"/api/v1/documents/{document_id}")).status_code == 404
