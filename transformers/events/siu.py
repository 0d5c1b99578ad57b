"""SIU^S12–S15 (and S17, S26) → "appointment" events.

HL7 v2.5.1 chapter 10 (§10.4): S12 new booking, S13 rescheduling, S14 modification, S15
cancellation, S17 deletion, S26 no-show. SCH-1/SCH-2 placer/filler appointment ids,
SCH-11 timing (TQ: .4 start, .5 end), SCH-7 reason, SCH-25 filler status; AIS-4, AIL-3 and
AIP-3 give start, location and the professional when SCH-11 is empty.
"""

from __future__ import annotations

from transformers.exchange import Exchange

from .common import EventError, envelope, facility, hl7_time, patient_from_pid, person

TRIGGER_ACTION = {"S12": "book", "S13": "reschedule", "S14": "modify", "S15": "cancel",
                  "S17": "delete", "S26": "no_show"}


def siu_events(exchange: Exchange) -> Exchange | None:
    msg = exchange.message
    if msg is None or exchange.headers.get("message_type") != "SIU":
        return None
    trigger = exchange.headers.get("trigger_event") or msg.get("MSH-9.2")
    if trigger not in TRIGGER_ACTION:
        # Not filtered out silently: an envelope without events, which the timeline
        # dead-letters with its reason (an S16 "discontinuation" makes no appointment event).
        return envelope(exchange, patient_from_pid(msg), [])
    sch = msg.segment("SCH")
    if sch is None:
        raise EventError("SIU without SCH segment")
    appt_id = sch.get(2, 1, 1) or sch.get(1, 1, 1)
    if not appt_id:
        raise EventError("SCH-1 and SCH-2 are empty: no appointment id")
    ais, ail, aip = msg.segment("AIS"), msg.segment("AIL"), msg.segment("AIP")
    start = hl7_time(sch.get(11, 1, 4)) or (hl7_time(ais.get(4, 1, 1)) if ais else None)
    event = {
        "type": "appointment", "key": f"{facility(msg, exchange)}|{appt_id}",
        "action": TRIGGER_ACTION[trigger], "trigger": trigger, "at": start,
        "start": start, "end": hl7_time(sch.get(11, 1, 5)),
        "reason": sch.get(7, 1, 2) or sch.get(7, 1, 1) or None,
        "service": (ais.get(3, 1, 2) or ais.get(3, 1, 1)) if ais else None,
        "location": ail.get(3, 1, 2) or ail.get(3, 1, 1) if ail else None,
        "professional": person(aip, 3) if aip else None,
        "status": sch.get(25, 1, 1) or None,
    }
    return envelope(exchange, patient_from_pid(msg), [event])
