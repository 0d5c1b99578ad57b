"""A trigger event the engine cannot interpret for its message type (HL7 table 0003) is an
AE/CE with ERR 201, stored as an error for the operator — never an AA that makes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.intake.test_ack_rules import msg, rows, segments
from transformers.hl7.ack import read_ack
from transformers.hl7.triggers import trigger_problem


async def test_trigger_in_the_wrong_component_is_ae_201(make_engine: Any, store_url: str) -> None:
    """The third-party feed's `ADT^ADT^A03`: MSH-9.2 reads ADT, the event sits in MSH-9.3."""
    eng = await make_engine(store_url=store_url)
    ack = await eng.send(msg("WRONG-COMP", mtype="ADT^ADT^A03").encode())
    s = segments(ack)
    assert s["MSA"][1:3] == ["AE", "WRONG-COMP"]
    assert s["ERR"][2] == "MSH^1^9^1^2"
    assert s["ERR"][3].startswith("201^Unsupported event code^HL70357")
    assert "table 0003" in s["ERR"][8]
    stored = (await rows(eng.store))[0]
    assert stored["status"] == "error" and "MSH-9.2" in stored["error"]
    assert stored["ack"] == ack


async def test_enhanced_mode_gets_ce(make_engine: Any) -> None:
    eng = await make_engine()
    ack = await eng.send(msg("WRONG-CE", mtype="ADT^ADT^A03", accept="AL").encode())
    assert read_ack(ack)[0] == "CE"


@pytest.mark.parametrize("mtype", ["ADT^A03^ADT_A03", "ADT^Z99", "ORU^R01", "XYZ^Q99"])
async def test_known_local_and_unchecked_triggers_are_accepted(make_engine: Any,
                                                                mtype: str) -> None:
    """Table 0003 events, site Z events (PAM-FR Z99) and types the table does not list."""
    eng = await make_engine()
    assert read_ack(await eng.send(msg(f"OK-{mtype}", mtype=mtype).encode()))[0] == "AA"


def test_trigger_table() -> None:
    assert trigger_problem("ADT", "ADT") is not None
    assert trigger_problem("ORU", "A01") is not None
    assert trigger_problem("MDM", "T12") is not None
    assert trigger_problem("SIU", "S12") is None
    assert trigger_problem("ADT", "") is None  # empty: the events layer says so (no event)
