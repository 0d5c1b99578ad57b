"""REF^I12/I13/I14 over MLLP → one referral on the patient's timeline, RRI^I12 back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine.referrals.models import referral_history, referrals
from engine.timeline.models import timeline_events
from transformers.hl7.ack import read_ack

from .support import DAC, ROUTES, ref, settle


def _ack(raw: bytes) -> tuple[str, str, str]:
    return read_ack(raw)


def _err(raw: bytes) -> list[str]:
    return [s for s in raw.decode().split("\r") if s.startswith("ERR|")]


async def _engine(make_engine: Any, store_url: str, tmp_path: Path) -> Any:
    eng = await make_engine(ROUTES, store_url=store_url, route=True, home=tmp_path / "home")
    eng.engine.referrals.add_structure(DAC, "DAC Paris Centre")
    return eng


def _rows(eng: Any, table: Any) -> list[dict[str, Any]]:
    with eng.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(table).order_by(table.c.id)).mappings()]


async def test_create_modify_cancel(make_engine: Any, store_url: str, tmp_path: Path) -> None:
    eng = await _engine(make_engine, store_url, tmp_path)
    assert _ack(await eng.send(ref("I12", "C-1")))[0] == "AA"
    await settle(eng, 1)
    [r] = _rows(eng, referrals)
    assert (r["key"], r["status"], r["structure_id"], r["priority"]) == (
        "1.2.250.1.999.1|DEM-1", "requested", DAC, "routine")
    assert r["reason"] == "provider ordered" and r["type"] == "Medical"

    assert _ack(await eng.send(ref("I13", "C-2", priority="S")))[0] == "AA"
    await settle(eng, 2)
    [r] = _rows(eng, referrals)
    assert (r["status"], r["priority"]) == ("requested", "stat")

    assert _ack(await eng.send(ref("I14", "C-3")))[0] == "AA"
    await settle(eng, 3)
    [r] = _rows(eng, referrals)
    assert r["status"] == "cancelled" and r["closed_at"] is not None
    assert [h["action"] for h in _rows(eng, referral_history)] == [
        "created", "modified", "cancelled"]
    titles = [e["title"] for e in _rows(eng, timeline_events) if e["type"] == "referral"]
    assert titles == ["Support request sent (Jeanne DUPONT)",
                      "Support request modified (Jeanne DUPONT)",
                      "Support request cancelled (Jeanne DUPONT)"]
    # the RRI^I12 for each REF, with the requester's referral id and the receipt status
    replies = sorted((tmp_path / "home" / "out" / "rri").glob("*.hl7"))
    assert len(replies) == 3
    rri = replies[0].read_bytes().decode().split("\r")
    assert rri[0].split("|")[8] == "RRI^I12^RRI_I12" and rri[1] == "MSA|AA|C-1"
    assert rri[2] == "RF1|P|||||DEM-1^^1.2.250.1.999.1"
    assert replies[2].read_bytes().decode().split("\r")[2].startswith("RF1|R|")


async def test_cancel_before_request_is_a_tombstone(make_engine: Any, store_url: str,
                                                    tmp_path: Path) -> None:
    eng = await _engine(make_engine, store_url, tmp_path)
    assert _ack(await eng.send(ref("I14", "T-1")))[0] == "AA"
    await settle(eng, 1)
    [r] = _rows(eng, referrals)
    assert r["tombstone"] and r["status"] == "cancelled"
    assert eng.engine.referrals.worklist(_admin(eng), include_closed=True) == []
    assert _ack(await eng.send(ref("I12", "T-2")))[0] == "AA"
    await settle(eng, 2)
    [r] = _rows(eng, referrals)
    assert not r["tombstone"] and r["status"] == "cancelled"  # the late request stays cancelled
    assert r["structure_id"] == DAC
    [h1, h2] = _rows(eng, referral_history)
    assert (h1["action"], h2["action"]) == ("cancelled", "created")
    assert '"cancelled_before_arrival": true' in h2["detail"]


async def test_same_request_twice_is_one(make_engine: Any, store_url: str,
                                         tmp_path: Path) -> None:
    eng = await _engine(make_engine, store_url, tmp_path)
    first = await eng.send(ref("I12", "D-1"))
    again = await eng.send(ref("I12", "D-1"))  # a resend: the original ACK, not processed
    assert again == first
    assert _ack(await eng.send(ref("I12", "D-2")))[0] == "AA"  # same RF1-6, new MSH-10
    from tests.routing.test_delivery_e2e import wait_status

    rows = await wait_status(eng, 3, ("done", "duplicate"))
    assert [r["status"] for r in sorted(rows, key=lambda r: r["id"])] == [
        "done", "duplicate", "done"]
    assert len(_rows(eng, referrals)) == 1
    assert [h["action"] for h in _rows(eng, referral_history)] == ["created"]


async def test_what_the_workflow_needs_is_answered_ae(make_engine: Any, store_url: str,
                                                      tmp_path: Path) -> None:
    eng = await _engine(make_engine, store_url, tmp_path)
    no_id = ref("I12", "E-1").replace(b"DEM-1^MEDIGP^1.2.250.1.999.1^ISO", b"")
    ack = await eng.send(no_id)
    assert _ack(ack)[0] == "AE"
    assert _err(ack) == ["ERR||RF1^1^6|101^Required field missing^HL70357|E||||RF1-6 "
                         "originating referral identifier is missing: it is the key of the "
                         "request"]
    ack = await eng.send(ref("I12", "E-2", pid=False))
    assert _ack(ack)[0] == "AE" and "PID^1|100^" in _err(ack)[0]
    ack = await eng.send(ref("I12", "E-3", structure=None))
    assert _ack(ack)[0] == "AE" and "PRD^1^1|101^" in _err(ack)[0]
    ack = await eng.send(ref("I12", "E-4", structure="130000009"))
    assert _ack(ack)[0] == "AE"
    assert _err(ack)[0].endswith("referred-to structure 130000009 is not a support structure "
                                 "known here") and "204^Unknown key identifier" in _err(ack)[0]
    # every refused message is kept (status error), none reaches the workflow
    from engine.store.models import messages

    with eng.store.engine.connect() as conn:
        assert [s for (s,) in conn.execute(select(messages.c.status))] == ["error"] * 4
    assert _rows(eng, referrals) == []


def _admin(eng: Any) -> Any:
    from engine.timeline.auth import Principal

    return Principal(None, "admin", "admin", None, "token")


async def test_bad_referrals_get_an_answer(make_engine: Any, tmp_path: Path) -> None:
    eng = await _engine(make_engine, f"sqlite:///{tmp_path / 'bad.db'}", tmp_path)
    msh = ("MSH|^~\\&|MEDIGP|CAB|PARCOURS|GHT|20261201101500||REF^I12^REF_I12|{}|P|2.5"
           "|||||FRA|UNICODE UTF-8")
    cases = {
        "B-1": msh.format("B-1"),  # nothing but MSH
        "B-2": msh.format("B-2") + "\rRF1|||||||\rPID|1",  # empty RF1, PID without PID-3
        "B-3": msh.format("B-3") + "\rRF1|P|~~~|^^^|&&&|~|^^^^^|\\X0D\\|~\rPRD|RT|~||||||~^~",
        "B-4": msh.format("B-4") + "\r" + "NTE|1||" + "x" * 70000,
    }
    for control_id, text in cases.items():
        ack = await eng.send(text.encode())
        code, echoed, _ = _ack(ack)
        assert (code, echoed) == ("AE", control_id), ack
        assert _err(ack), ack
    # an I13 needs no RT (it modifies a request already addressed); the listener is still up
    assert _ack(await eng.send(ref("I13", "B-5", structure=None)))[0] == "AA"


async def test_enhanced_mode_refusal_is_ce(make_engine: Any, tmp_path: Path) -> None:
    eng = await _engine(make_engine, f"sqlite:///{tmp_path / 'ce.db'}", tmp_path)
    text = ref("I12", "CE-1", structure="130000009").decode()
    lines = text.split("\r")
    f = lines[0].split("|")
    f += [""] * (17 - len(f))
    f[14], f[15] = "AL", "NE"  # MSH-15 accept ack AL, MSH-16 application ack NE
    ack = await eng.send("\r".join(["|".join(f), *lines[1:]]).encode())
    assert _ack(ack)[:2] == ("CE", "CE-1")
    assert "204^Unknown key identifier" in _err(ack)[0]
