"""Operators do not see what patients or authors hid: a masked or confidentiality-V document
is withheld on the raw message page until an audited break-glass with a reason."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import insert, select

from engine.timeline.models import audit_log
from engine.ui.redaction import GRANT_ACTION
from tests.conftest import corpus
from tests.hardening.test_hostile_xml import CDA, mdm_carrying
from tests.ui import conftest as ui_conftest
from tests.ui.conftest import csrf_of, http_port, login
from tests.ui.timeline_support import create_account

ui_engine = ui_conftest.ui_engine  # the UI tests' engine fixture, used here too
MASQUE = "MASQUE_PS^Masqué aux professionnels de Santé^MetaDMPMSS||".encode()
HIDDEN_FROM_PATIENT = (b"Document Non Visible par le patient^MetaDMPMSS||",
                       "Non visible par les représentants Légaux du patient^MetaDMPMSS||".encode())


def plain_mdm(control_id: str) -> bytes:
    """The corpus MDM with every MetaDMPMSS masking flag at N (it ships two at Y)."""
    raw = mdm_carrying(CDA.read_bytes(), control_id)
    for flag in HIDDEN_FROM_PATIENT:
        assert flag + b"Y" in raw
        raw = raw.replace(flag + b"Y", flag + b"N")
    return raw


def masked_mdm(control_id: str) -> bytes:
    raw = plain_mdm(control_id)
    assert MASQUE + b"N" in raw
    return raw.replace(MASQUE + b"N", MASQUE + b"Y")


def very_restricted_mdm(control_id: str) -> bytes:
    cda = CDA.read_bytes().replace(b'confidentialityCode code="N"', b'confidentialityCode code="V"')
    assert b'code="V"' in cda
    raw = mdm_carrying(cda, control_id)
    for flag in HIDDEN_FROM_PATIENT:
        raw = raw.replace(flag + b"Y", flag + b"N")
    return raw


async def message_id(eng: Any, control_id: str) -> int:
    from engine.store.models import messages

    with eng.store.engine.connect() as conn:
        return int(conn.execute(select(messages.c.id).where(
            messages.c.control_id == control_id)).scalar_one())


async def test_withheld_until_break_glass_and_the_break_is_audited(ui_engine: Any) -> None:
    eng = ui_engine
    for _cid, raw in (("MASKED-1", masked_mdm("MASKED-1")),
                     ("VERY-1", very_restricted_mdm("VERY-1")),
                     ("PLAIN-1", plain_mdm("PLAIN-1"))):
        assert b"MSA|AA" in await eng.send(raw)
    ops = create_account(eng.engine, "ops-1", "operator")
    other = create_account(eng.engine, "ops-2", "operator")
    b64_head = base64.b64encode(CDA.read_bytes())[:40].decode()
    base = f"http://127.0.0.1:{http_port(eng)}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        await login(c, ops)
        for cid, why in (("MASKED-1", "MASQUE_PS"), ("VERY-1", "confidentiality V")):
            mid = await message_id(eng, cid)
            page = await c.get(f"/ui/messages/{mid}")
            assert page.status_code == 200
            assert "content withheld" in page.text and why in page.text
            assert "PAT-TROIS" not in page.text and b64_head not in page.text
            assert "break-glass-form" in page.text
        plain = await c.get(f"/ui/messages/{await message_id(eng, 'PLAIN-1')}")
        assert "PAT-TROIS" in plain.text and "content withheld" not in plain.text

        mid = await message_id(eng, "MASKED-1")
        csrf = csrf_of((await c.get(f"/ui/messages/{mid}")).text)
        r = await c.post(f"/ui/messages/{mid}/break-glass", data={"csrf": csrf, "reason": "x"})
        assert r.status_code == 303 and "glass-refused" in r.headers["location"]
        assert "content withheld" in (await c.get(f"/ui/messages/{mid}")).text
        r = await c.post(f"/ui/messages/{mid}/break-glass", data={"csrf": "forged",
                                                                   "reason": "a" * 20})
        assert r.status_code in (400, 403)
        r = await c.post(f"/ui/messages/{mid}/break-glass",
                         data={"csrf": csrf, "reason": "ticket INC-42: sender asks why AR"})
        assert r.status_code == 303 and "glass-broken" in r.headers["location"]
        shown = await c.get(f"/ui/messages/{mid}")
        assert "PAT-TROIS" in shown.text and "shown after break-glass" in shown.text
        # Only for that message.
        very = await c.get(f"/ui/messages/{await message_id(eng, 'VERY-1')}")
        assert "content withheld" in very.text

    # A grant older than BREAK_GLASS_SECONDS is closed: ops-2's, written 16 minutes ago.
    with eng.engine.timeline.db.begin() as conn:
        conn.execute(insert(audit_log).values(
            at=datetime.now(UTC) - timedelta(minutes=16), actor="ops-2", role="operator",
            action=GRANT_ACTION, outcome="break_glass", remote="127.0.0.1",
            detail=json.dumps({"message_id": mid, "reason": "an old ticket, expired"})))
    async with httpx.AsyncClient(base_url=base, timeout=30) as c2:  # another operator
        await login(c2, other)
        page = await c2.get(f"/ui/messages/{mid}")
        assert "content withheld" in page.text and "PAT-TROIS" not in page.text

    with eng.store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(audit_log).where(
            audit_log.c.action == "ui.break_glass")).mappings()]
    assert len(rows) == 2 and rows[0]["actor"] == "ops-1"
    assert rows[0]["outcome"] == "break_glass"
    detail = json.loads(rows[0]["detail"])
    assert detail["message_id"] == mid and detail["reason"].startswith("ticket INC-42")


async def test_a_break_glass_grant_is_read_from_the_audit_log_not_kept_in_memory(
        ui_engine: Any) -> None:
    """The grant survives a restart of the UI (and holds in every engine process): a new
    app over the same store, with nothing carried over, still shows the content."""
    from engine.ui import auth_adapter

    eng = ui_engine
    assert b"MSA|AA" in await eng.send(masked_mdm("MASKED-R"))
    ops = create_account(eng.engine, "ops-r", "operator")
    mid = await message_id(eng, "MASKED-R")
    assert not auth_adapter.break_glass_open(eng.engine, "ops-r", mid, GRANT_ACTION, 900)
    base = f"http://127.0.0.1:{http_port(eng)}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        await login(c, ops)
        csrf = csrf_of((await c.get(f"/ui/messages/{mid}")).text)
        r = await c.post(f"/ui/messages/{mid}/break-glass",
                         data={"csrf": csrf, "reason": "ticket INC-43: resend check"})
        assert r.status_code == 303
    assert auth_adapter.break_glass_open(eng.engine, "ops-r", mid, GRANT_ACTION, 900)
    assert not auth_adapter.break_glass_open(eng.engine, "ops-r", mid + 1, GRANT_ACTION, 900)
    assert not auth_adapter.break_glass_open(eng.engine, "ops-x", mid, GRANT_ACTION, 900)

    from engine.api.http import create_app

    fresh = httpx.ASGITransport(app=create_app(eng.engine))
    async with httpx.AsyncClient(transport=fresh, base_url="http://127.0.0.1") as c:
        await login(c, ops)
        page = await c.get(f"/ui/messages/{mid}")
        assert page.status_code == 200
        assert "PAT-TROIS" in page.text and "content withheld" not in page.text


def test_sensitivity_reads_masking_and_confidentiality() -> None:
    from engine.ui.redaction import sensitivity

    assert sensitivity(masked_mdm("A"), "MDM") == ["MASQUE_PS"]
    assert sensitivity(very_restricted_mdm("B"), "MDM") == ["confidentiality V"]
    assert sensitivity(plain_mdm("C"), "MDM") == []
    assert sensitivity(mdm_carrying(CDA.read_bytes(), "D"), "MDM") == [
        "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX"]
    assert sensitivity(CDA.read_bytes().replace(b'code="N"', b'code="V"', 1), "CDA") == [
        "confidentiality V"]
    adt = corpus("hl7v2", "ans", "Vague_2", "Consentement_DMP_PAMFR",
                 "ConsentementConsultation_NonOppositionAlimentation.er7").read_bytes()
    assert sensitivity(adt, "ADT") == []
    assert sensitivity(b"not hl7", "MDM") == []
