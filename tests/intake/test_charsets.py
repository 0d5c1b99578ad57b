"""MSH-18 and channel character sets: decoded right, or refused with AR/CR and ERR."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import corpus, routes_text
from tests.intake.test_ack_rules import msg, rows, segments
from transformers.hl7.ack import read_ack
from transformers.hl7.reader import Message


@pytest.mark.parametrize(
    ("charset", "codec"),
    [("UNICODE UTF-8", "utf-8"), ("8859/1", "latin-1"), ("ASCII", "ascii"), ("", "utf-8")],
)
async def test_declared_charsets_are_decoded(make_engine: Any, charset: str, codec: str) -> None:
    eng = await make_engine()
    name = "MULLER^JEAN" if codec == "ascii" else "MÜLLER^JOSÉ"
    raw = msg(f"CS-{codec}", charset=charset, name=name).encode(codec)
    ack = await eng.send(raw)
    assert read_ack(ack)[0] == "AA"
    stored = (await rows(eng.store))[0]
    assert stored["charset"] == codec
    text = stored["raw"].decode(stored["charset"])
    assert Message.parse(text).get("PID-5.1") == name.split("^")[0]


async def test_undecodable_bytes_get_ar_with_location(make_engine: Any) -> None:
    eng = await make_engine()
    raw = msg("BAD-ASCII", charset="ASCII", name="MÜLLER^JOSÉ").encode("latin-1")
    ack = await eng.send(raw)
    s = segments(ack)
    assert s["MSA"][1:3] == ["AR", "BAD-ASCII"]
    assert s["ERR"][2].startswith("PID") and s["ERR"][3].startswith("102^")
    assert (await rows(eng.store))[0]["status"] == "rejected"


async def test_unsupported_charset_gets_ar_enhanced_cr(make_engine: Any) -> None:
    eng = await make_engine()
    ack = await eng.send(msg("K1", charset="KS X 1001").encode())
    assert read_ack(ack)[0] == "AR" and segments(ack)["ERR"][2] == "MSH^1^18"
    ack = await eng.send(msg("K2", charset="KS X 1001", accept="AL").encode())
    assert read_ack(ack)[0] == "CR"


async def test_channel_charset_overrides_and_latin1_corpus(make_engine: Any) -> None:
    path = corpus("hl7v2", "latin1", "iti8", "iti8-a40-iso-8859-1.hl7")
    raw = path.read_bytes()
    default = await make_engine()
    assert read_ack(await default.send(raw))[0] == "AR"  # no MSH-18, not UTF-8: refused
    channels = "  main:\n    type: mllp\n    host: 127.0.0.1\n    port: 0\n    charset: 8859/1\n"
    forced = await make_engine(routes_text(channels), home=default.engine.settings.home / "b")
    ack = await forced.send(raw)
    assert read_ack(ack)[0] == "AA"
    stored = (await rows(forced.store))[0]
    text = stored["raw"].decode(stored["charset"])
    assert "\u00c4" in text or "\u00e4" in text or "\u00f6" in text or "\u00fc" in text


async def test_non_ascii_separator_is_echoed_byte_for_byte(make_engine: Any) -> None:
    """MSH-1 `\\xa1` in a message declaring UTF-8 (whose body is then not UTF-8): the AR
    must use the separator the sender used, as one byte, or the sender cannot read it."""
    eng = await make_engine()
    raw = msg("SEP-A1", charset="UNICODE UTF-8").replace("|", "\xa1").encode("latin-1")
    ack = await eng.send(raw)
    assert ack.startswith(b"MSH\xa1^~\\&\xa1")
    assert b"\xc2" not in ack
    fields = ack.split(b"\r")[1].split(b"\xa1")
    assert fields[:3] == [b"MSA", b"AR", b"SEP-A1"]
    stored = (await rows(eng.store))[0]
    assert stored["raw"] == raw and stored["ack"] == ack


async def test_utf8_sender_names_are_echoed_as_received(make_engine: Any) -> None:
    """MSH-5/6 of the ACK are the sender's MSH-3/4, in the sender's bytes (not re-encoded)."""
    eng = await make_engine()
    raw = msg("UTF8-NAMES", charset="UNICODE UTF-8", sender="LABO^Hôpital Bicêtre").encode()
    ack = await eng.send(raw)
    assert read_ack(ack)[0] == "AA"
    msh = ack.split(b"\r")[0].split(b"|")
    assert msh[5] == "Hôpital Bicêtre".encode()
    ack.decode("utf-8")  # the whole ACK is valid UTF-8, as MSH-18 promised
