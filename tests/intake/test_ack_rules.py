"""Every acknowledgement rule of issue #2, over real sockets, on both stores."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from engine.store.models import messages
from tests.conftest import routes_text
from transformers.hl7.ack import read_ack


def msg(
    control_id: str = "CTRL1",
    *,
    version: str = "2.5.1",
    processing: str = "P",
    mtype: str = "ADT^A01^ADT_A01",
    accept: str = "",
    app_ack: str = "",
    charset: str = "",
    sender: str = "HIS^CHU-X",
    name: str = "DUPONT^JEAN",
    sep: str = "\r",
) -> str:
    app, fac = sender.split("^")
    msh = (
        f"MSH|^~\\&|{app}|{fac}|PARCOURS|ARS-IDF|20261125120000||{mtype}|{control_id}|"
        f"{processing}|{version}|||{accept}|{app_ack}||{charset}"
    )
    return sep.join(
        [msh, "EVN|A01|20261125120000", f"PID|1||12345^^^CHU-X&1.2.3&ISO^PI||{name}||19800101|M",
         "PV1|1|I|CARDIO^101^1"]
    ) + sep


def segments(ack: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for seg in ack.decode("latin-1").split("\r"):
        if seg and seg[:3] not in out:  # first occurrence of each segment
            out[seg[:3]] = seg.split("|")
    return out


async def rows(store: Any) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(messages).order_by(messages.c.id)).mappings()]


@pytest.fixture
async def eng(make_engine: Any, store_url: str) -> Any:
    return await make_engine(store_url=store_url)


async def test_aa_after_commit_echoes_header(eng: Any) -> None:
    raw = msg("A-1").encode()
    ack = await eng.send(raw)
    s = segments(ack)
    assert s["MSA"][1:3] == ["AA", "A-1"]
    msh = s["MSH"]
    assert msh[1] == "^~\\&"
    assert msh[2:4] == ["PARCOURS", "ARS-IDF"]  # we are who the sender addressed
    assert msh[4:6] == ["HIS", "CHU-X"]  # MSH-5/6 = incoming MSH-3/4
    assert msh[8] == "ACK^A01^ACK"
    assert msh[11] == "2.5.1"
    assert "ERR" not in s
    stored = await rows(eng.store)
    assert len(stored) == 1
    assert stored[0]["raw"] == raw  # exactly as received
    assert stored[0]["status"] == "accepted"
    assert stored[0]["control_id"] == "A-1"
    assert stored[0]["message_type"] == "ADT" and stored[0]["trigger_event"] == "A01"
    assert stored[0]["sending_facility"] == "CHU-X"
    assert stored[0]["patient_key"] == "CHU-X&1.2.3&ISO|12345"
    assert stored[0]["ack"] == ack


async def test_missing_control_id_is_ae_with_err_and_stored(eng: Any) -> None:
    ack = await eng.send(msg("").encode())
    s = segments(ack)
    assert s["MSA"][1] == "AE"
    assert s["MSA"][2] == ""
    err = s["ERR"]
    assert err[2] == "MSH^1^10"  # ERR-2 location
    assert err[3].startswith("101^Required field missing^HL70357")
    assert err[4] == "E"
    stored = await rows(eng.store)
    assert stored[0]["status"] == "error" and "MSH-10" in stored[0]["error"]


@pytest.mark.parametrize(
    ("kwargs", "code", "location"),
    [
        ({"processing": "X"}, "202", "MSH^1^11"),
        ({"version": "3.0"}, "203", "MSH^1^12"),
    ],
)
async def test_refusals_are_ar_and_stored(eng: Any, kwargs: dict[str, str], code: str,
                                          location: str) -> None:
    ack = await eng.send(msg("R-1", **kwargs).encode())
    s = segments(ack)
    assert s["MSA"][1:3] == ["AR", "R-1"]
    assert s["ERR"][2] == location and s["ERR"][3].startswith(code + "^")
    stored = await rows(eng.store)
    assert stored[0]["status"] == "rejected"


async def test_channel_policy_versions_types_segments(make_engine: Any) -> None:
    channels = (
        "  main:\n    type: mllp\n    host: 127.0.0.1\n    port: 0\n"
        "    accept:\n      versions: ['2.5']\n      message_types: ['ADT^A01', 'ORU^*']\n"
        "      require_segments: [PV2]\n"
    )
    eng = await make_engine(routes_text(channels))
    ack = await eng.send(msg("V", version="2.3").encode())
    # v2.3 has no ERR-2/ERR-3: the error goes in ERR-1 (ELD: segment^seq^field^code&text)
    assert read_ack(ack)[0] == "AR"
    assert segments(ack)["ERR"][1].startswith("MSH^1^12^203&Unsupported version id&HL70357")
    ack = await eng.send(msg("T", mtype="ADT^A02").encode())
    assert read_ack(ack)[0] == "AR" and segments(ack)["ERR"][3].startswith("201^")
    ack = await eng.send(msg("T2", mtype="SIU^S12").encode())
    assert segments(ack)["ERR"][3].startswith("200^")
    ack = await eng.send(msg("S").encode())  # 2.5.1 counts as 2.5; PV2 missing → AE
    assert read_ack(ack)[0] == "AE" and segments(ack)["ERR"][3].startswith("100^")


async def test_unreadable_msh_is_stored_and_answered_ar(eng: Any) -> None:
    garbage = b"this is not HL7 at all\rPID|1\r"
    ack = await eng.send(garbage)
    assert read_ack(ack)[0] == "AR"
    assert segments(ack)["ERR"][3].startswith("100^")
    bad_encoding = b"MSH|^^|APP|FAC|||2026||ADT^A01|X1|P|2.5\r"
    ack = await eng.send(bad_encoding)
    assert read_ack(ack)[0] == "AR"
    stored = await rows(eng.store)
    assert [r["raw"] for r in stored] == [garbage, bad_encoding]
    assert {r["status"] for r in stored} == {"rejected"}


async def test_enhanced_mode_commit_acks(eng: Any) -> None:
    ack = await eng.send(msg("E-1", accept="AL", app_ack="AL").encode())
    assert read_ack(ack)[:2] == ("CA", "E-1")
    ack = await eng.send(msg("", accept="AL", app_ack="NE").encode())
    assert read_ack(ack)[0] == "CE"
    ack = await eng.send(msg("E-2", accept="AL", processing="Q").encode())
    assert read_ack(ack)[0] == "CR"
    # MSH-16 alone: still a commit ACK
    ack = await eng.send(msg("E-3", app_ack="AL").encode())
    assert read_ack(ack)[0] == "CA"
    stored = await rows(eng.store)
    assert stored[0]["application_ack_type"] == "AL"


@pytest.mark.parametrize(
    ("accept", "good_reply", "bad_reply"),
    [("NE", False, False), ("ER", False, True), ("SU", True, False), ("AL", True, True)],
)
async def test_enhanced_accept_ack_types(make_engine: Any, accept: str, good_reply: bool,
                                         bad_reply: bool) -> None:
    from connectors.mllp.client import MLLPClient
    from connectors.mllp.errors import MLLPTimeout

    eng = await make_engine()
    async with MLLPClient("127.0.0.1", eng.port(), ack_timeout=0.6) as c:
        for payload, expect in ((msg("G", accept=accept), good_reply),
                                (msg("B", accept=accept, processing="Q"), bad_reply)):
            if expect:
                reply = await c.send(payload.encode())
                assert read_ack(reply)[0] in ("CA", "CR")
            else:
                with pytest.raises(MLLPTimeout):
                    await c.send(payload.encode())
                await c.close()
    stored = await rows(eng.store)
    assert [r["control_id"] for r in stored] == ["G", "B"]  # stored whether answered or not


async def test_duplicate_gets_original_ack_and_is_not_processed_twice(eng: Any) -> None:
    raw = msg("DUP-1").encode()
    first = await eng.send(raw)
    again = await eng.send(raw)
    assert again == first  # the original ACK, byte for byte
    other_sender = await eng.send(msg("DUP-1", sender="LAB^LAB-X").encode())
    assert other_sender != first and read_ack(other_sender)[0] == "AA"
    stored = await rows(eng.store)
    statuses = [(r["control_id"], r["status"], r["duplicate_of"]) for r in stored]
    assert statuses == [
        ("DUP-1", "accepted", None),
        ("DUP-1", "duplicate", stored[0]["id"]),
        ("DUP-1", "accepted", None),
    ]
    assert stored[1]["error"] is None  # same bytes: a plain resend, nothing to report


async def test_segment_separators_lf_and_crlf(eng: Any) -> None:
    for sep, cid in (("\n", "LF-1"), ("\r\n", "CRLF-1")):
        ack = await eng.send(msg(cid, sep=sep).encode())
        assert read_ack(ack)[:2] == ("AA", cid)
    stored = await rows(eng.store)
    assert [r["patient_key"] for r in stored] == ["CHU-X&1.2.3&ISO|12345"] * 2
    assert stored[0]["raw"].count(b"\n") == 4  # stored as received, not normalised


async def test_store_down_answers_ar_not_aa(eng: Any) -> None:
    def broken(_arrivals: Any) -> Any:
        raise RuntimeError("disk full")

    eng.engine.committer._save = broken
    ack = await eng.send(msg("DOWN-1").encode())
    assert read_ack(ack)[0] == "AR"
    assert "207" in segments(ack)["ERR"][3]


async def test_store_refusing_writes_gets_ar_then_recovers(eng: Any) -> None:
    """Not stored, so not acknowledged: while the messages table cannot be written the sender
    gets AR with ERR 207 (HL7 v2.5.1 §2.9.2, resend later); once it can, AA again."""
    store = eng.store
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE messages RENAME TO messages_away")
    try:
        ack = await eng.send(msg("DOWN-1").encode())
    finally:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE messages_away RENAME TO messages")
    s = segments(ack)
    assert s["MSA"][1:3] == ["AR", "DOWN-1"]
    assert s["ERR"][3].split("^")[0] == "207"
    assert "resend later" in ack.decode()
    assert eng.engine.intake.stats["main"].store_errors == 1
    ack = await eng.send(msg("DOWN-1").encode())  # the resend is a first arrival
    assert segments(ack)["MSA"][1:3] == ["AA", "DOWN-1"]
    assert [r["control_id"] for r in await rows(store)] == ["DOWN-1"]
