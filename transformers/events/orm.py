"""ORM^O01 and OML^O21 → "order" events, one per ORC/OBR pair.

HL7 v2.5.1 chapter 4 (§4.4 ORM^O01, ORC; table 0119 ORC-1 order control: NW new, CA/OC/DC
cancel/discontinue, XO/RP change) and §4.5 OBR; IHE LAB/LTW (OML^O21) uses the same
ORC/OBR pairs. The test is OBR-4 (LOINC when OBR-4.3 = LN, else the alternate code OBR-4.4–6
when it is LOINC, else the local code qualified by its coding system): the timeline compares
it to flag the same test ordered again by another prescriber within the redundancy window.
"""

from __future__ import annotations

from typing import Any

from transformers.exchange import Exchange
from transformers.hl7.reader import Segment

from .common import EventError, envelope, facility, hl7_time, patient_from_pid, person

CONTROL_ACTION = {"NW": "new", "OK": "new", "SN": "new", "XO": "update", "XX": "update",
                  "RP": "update", "SC": "update", "CA": "cancel", "OC": "cancel",
                  "DC": "cancel", "CR": "cancel", "OD": "cancel"}


def test_key(obr: Segment) -> dict[str, str]:
    code, text, system = obr.get(4, 1, 1), obr.get(4, 1, 2), obr.get(4, 1, 3)
    alt, alt_system = obr.get(4, 1, 4), obr.get(4, 1, 6)
    if system == "LN":
        compare = f"LN|{code}"
    elif alt and alt_system == "LN":
        compare = f"LN|{alt}"
    else:
        compare = f"{system or 'L'}|{code}"
    return {"code": code, "text": text, "system": system, "compare": compare}


def orm_events(exchange: Exchange) -> Exchange | None:
    msg = exchange.message
    if msg is None or exchange.headers.get("message_type") not in ("ORM", "OML"):
        return None
    fac = facility(msg, exchange)
    events: list[dict[str, Any]] = []
    orc: Segment | None = None
    for seg in msg.segments:
        if seg.name == "ORC":
            orc = seg
            continue
        if seg.name != "OBR":
            continue
        placer = (orc.get(2, 1, 1) if orc else "") or seg.get(2, 1, 1)
        filler = (orc.get(3, 1, 1) if orc else "") or seg.get(3, 1, 1)
        test = test_key(seg)
        if not (placer or filler):
            raise EventError(f"OBR {seg.get(1)}: no placer (ORC-2/OBR-2) or filler number")
        control = orc.get(1) if orc else "NW"
        prescriber = (person(orc, 12) if orc else None) or person(seg, 16)
        events.append({
            "type": "order", "key": f"{fac}|{placer or filler}|{test['code']}",
            "action": CONTROL_ACTION.get(control, "update"), "control": control,
            "at": (hl7_time(orc.get(9, 1, 1)) if orc else None) or hl7_time(seg.get(6, 1, 1))
            or hl7_time(msg.get("MSH-7.1")),
            "placer": placer or None, "filler": filler or None, "test": test,
            "prescriber": prescriber, "status": (orc.get(5) if orc else "") or None,
            "priority": seg.get(5) or None,
        })
    if not events:
        raise EventError("no OBR segment: nothing ordered")
    return envelope(exchange, patient_from_pid(msg), events)
