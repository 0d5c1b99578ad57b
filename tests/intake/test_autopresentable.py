"""Issue #15: the ANS "auto-présentable" CDA — a ClinicalDocument carried as a top-level data
element of an XSL stylesheet — is read (folder channel → timeline → /api/v1), with the safe
XML rules unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from safexml import UnsafeXML, parse
from tests.conftest import corpus, routes_text
from tests.intake.test_folder import stored, wait_for
from transformers.cda.header import NotCDA, clinical_document, read_header

TSH = ("cda", "ans-examples", "BIO-CR-BIO_2024.01_TSH_1.xml")


def wrap(cda: bytes, copies: int = 1) -> bytes:
    """The CDA inside an XSL stylesheet that renders it (`document('')`)."""
    body = cda.split(b"?>", 1)[1] if cda.lstrip().startswith(b"<?xml") else cda
    while body.lstrip().startswith((b"<?", b"<!--")):  # processing instructions, comments
        body = body.split(b"?>" if body.lstrip().startswith(b"<?") else b"-->", 1)[1]
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
            b'<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"'
            b' xmlns:cda="urn:hl7-org:v3">\n'
            b'<xsl:template match="/"><html><body><xsl:apply-templates '
            b'select="document(\'\')/xsl:stylesheet/cda:ClinicalDocument"/></body></html>'
            b'</xsl:template>\n' + body * copies + b"\n</xsl:stylesheet>\n")


def test_the_carried_document_is_read() -> None:
    raw = corpus(*TSH).read_bytes()
    plain, wrapped = read_header(parse(raw)), read_header(parse(wrap(raw)))
    assert wrapped == plain and wrapped.document_id == "1.2.250.1.213.1.1.1.55.2024.9.1"


def test_bad_wrappers_are_refused() -> None:
    raw = corpus(*TSH).read_bytes()
    with pytest.raises(NotCDA, match="carries 2 ClinicalDocument"):
        clinical_document(parse(wrap(raw, copies=2)))
    with pytest.raises(NotCDA, match="carries 0"):
        clinical_document(parse(wrap(b"<x/>")))
    with pytest.raises(NotCDA, match="root element is html"):
        clinical_document(parse(b"<html/>"))
    evil = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]>'
            + wrap(raw).split(b"?>", 1)[1])
    with pytest.raises(UnsafeXML):
        parse(evil)


async def test_folder_to_timeline_over_api(make_engine: Any, store_url: str,
                                           tmp_path: Path) -> None:
    from engine.timeline import auth

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "tsh-auto.xml").write_bytes(wrap(corpus(*TSH).read_bytes()))
    text = routes_text(
        f"  drop:\n    type: folder\n    path: {inbox}\n    poll_interval: 0.05\n",
        "{timeline: {type: timeline}}",
        "[{name: documents-timeline, when: {message_type: CDA}, transform: [mdm_events], "
        "to: [timeline]}]")
    eng = await make_engine(text, store_url=store_url, route=True, http=True)
    await wait_for(lambda: len(list((inbox / "archive").iterdir())) == 1, timeout=20)
    [row] = stored(eng)
    assert row["message_type"] == "CDA" and row["status"] != "rejected", row["error"]
    assert not list((inbox / "error").iterdir())
    _, admin = auth.add_user(eng.store.engine, "root", "admin")
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        h = {"Authorization": f"Bearer {admin}"}
        events: list[dict[str, Any]] = []
        for _ in range(200):
            r = await c.get("/api/v1/patients", headers=h,
                            params={"identifier": "1.2.3.4.567.8.9.10|1234567890121"})
            pats = r.json().get("patients") or []
            if pats:
                r = await c.get(f"/api/v1/patients/{pats[0]['id']}/timeline", headers=h,
                                params={"type": "document"})
                events = r.json()["events"]
                if events:
                    break
            await asyncio.sleep(0.05)
        [event] = events
        assert event["code"] == "11502-2" and event["status"] == "active"
