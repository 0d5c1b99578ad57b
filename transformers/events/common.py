"""What every event family shares: the envelope, patients from PID, people from XCN, times.

The envelope is plain JSON (the outbox stores it as bytes and the timeline destination reads
it back), so everything here returns str/int/bool/list/dict only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from transformers.exchange import Exchange
from transformers.hl7.header import INS_OIDS
from transformers.hl7.reader import Message, Segment

from . import CONTENT_TYPE

ENVELOPE_VERSION = 1
# HL7 v2 DTM values without an offset are local time of the sender (§2.A.22); the regional
# platform's senders are in metropolitan France.
DEFAULT_ZONE = ZoneInfo("Europe/Paris")
# PID-32 identity reliability codes under which the INS must not link identities (RNIV:
# an INS is only usable once the identity is at least validated — PROV, DOUTE, FICTI are not).
UNRELIABLE_STATUSES = frozenset({"PROV", "DOUTE", "FICTI"})


class EventError(ValueError):
    """The message cannot give events (no PID, unreadable document, …); says what and where."""


def hl7_time(value: str, zone: ZoneInfo = DEFAULT_ZONE) -> str | None:
    """HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]) → ISO 8601 in UTC, or None."""
    value = (value or "").strip()
    if not value:
        return None
    offset: timezone | ZoneInfo = zone
    for sign in ("+", "-"):
        pos = value.find(sign, 4)
        if pos > 0:
            tz = value[pos + 1:]
            value = value[:pos]
            if len(tz) == 4 and tz.isascii() and tz.isdigit():
                # HL7 v2.5.1 §2.A.22 DTM: +/-HHMM; an offset of a day or more is no time
                # zone (and `timezone` refuses it), so the whole value is unreadable.
                hours, minutes = int(tz[:2]), int(tz[2:])
                if hours > 23 or minutes > 59:
                    return None
                delta = timedelta(hours=hours, minutes=minutes)
                offset = timezone(delta if sign == "+" else -delta)
            break
    value = value.split(".", 1)[0]
    if not value.isdigit() or len(value) < 4:
        return None
    digits = value.ljust(14, "0")
    if len(value) < 6:
        digits = value[:4] + "0101000000"
    elif len(value) < 8:
        digits = value[:6] + "01000000"
    try:  # the constructor checks the ranges strptime would, at a fraction of its cost
        dt = datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:10]),
                      int(digits[10:12]), int(digits[12:14]), tzinfo=offset)
    except ValueError:
        return None
    return dt.astimezone(UTC).isoformat()


def identifier(cx_components: list[str], subsep: str = "&") -> dict[str, str] | None:
    """One CX (PID-3 repetition, MRG-1, …) → {value, authority, namespace, type, ins}.

    The authority is CX-4.2 (universal id, an OID for the INS) when given, else CX-4.1; the
    INS is recognised by CX-5 = INS or an INS OID (ANS CI-SIS, OIDs 1.2.250.1.213.1.4.8–.11).
    """
    comps = cx_components + [""] * 6
    value = comps[0].strip()
    if not value:
        return None
    auth = comps[3].split(subsep) + ["", ""]
    namespace, universal = auth[0].strip(), auth[1].strip()
    id_type = comps[4].strip()
    is_ins = id_type == "INS" or universal in INS_OIDS
    authority = universal or namespace
    if is_ins and not authority:
        authority = "1.2.250.1.213.1.4.8"
    return {"value": value, "authority": authority, "namespace": namespace,
            "type": "INS" if is_ins else (id_type or "PI")}


def cx_list(seg: Segment | None, n: int) -> list[dict[str, str]]:
    if seg is None:
        return []
    sub = seg._enc.subcomponent  # noqa: SLF001 - the reader's encoding characters
    out = []
    for r in range(1, len(seg.repetitions(n)) + 1):
        ident = identifier(seg.components(n, r), sub)
        if ident is not None:
            out.append(ident)
    return out


def cx_withdrawn(seg: Segment | None, n: int) -> list[dict[str, str]]:
    """The repetitions of a CX field whose CX-1 is HL7's explicit null `""` (HL7 v2.5.1
    §2.5.3: delete the value): the identifier of that authority (the INS, in a PAM-FR
    withdrawal) is to be removed from the patient, not stored as the two characters."""
    if seg is None:
        return []
    out = []
    for r in range(1, len(seg.repetitions(n)) + 1):
        if not (seg.is_null(n, r) or seg.is_null(n, r, 1)):
            continue
        ident = identifier(["withdrawn", *seg.components(n, r)[1:]],
                           seg._enc.subcomponent)  # noqa: SLF001
        if ident is not None and ident["authority"]:
            out.append({"authority": ident["authority"], "type": ident["type"]})
    return out


def person(seg: Segment | None, n: int, rep: int = 1) -> dict[str, str] | None:
    """XCN (PV1-7/8/9/17, ORC-12, OBR-16, …) → {id, family, given, authority}."""
    if seg is None:
        return None
    comps = seg.components(n, rep) + [""] * 10
    if not any(comps[:3]):
        return None
    auth = comps[8].split(seg._enc.subcomponent) + ["", ""]  # noqa: SLF001
    return {"id": comps[0].strip(), "family": comps[1].strip(), "given": comps[2].strip(),
            "authority": (auth[1] or auth[0]).strip()}


def people(seg: Segment | None, n: int) -> list[dict[str, str]]:
    if seg is None:
        return []
    out = []
    for r in range(1, len(seg.repetitions(n)) + 1):
        p = person(seg, n, r)
        if p is not None:
            out.append(p)
    return out


def patient_from_pid(msg: Message) -> dict[str, Any]:
    """PID → the patient part of the envelope (identifiers, INS, identity status, names)."""
    pid = msg.segment("PID")
    if pid is None:
        raise EventError("no PID segment: events need a patient")
    ids = cx_list(pid, 3)
    if not ids:
        raise EventError("PID-3 has no identifier")
    status = pid.get(32).strip().upper()
    # HL7 v2.5.1 §2.5.3: `""` deletes the value held; an empty field keeps it.
    cleared = [name for name, nulls in (
        ("family", (pid.is_null(5), pid.is_null(5, 1, 1), pid.is_null(5, 1, 1, 1))),
        ("given", (pid.is_null(5), pid.is_null(5, 1, 2))),
        ("birth_date", (pid.is_null(7), pid.is_null(7, 1, 1))),
        ("sex", (pid.is_null(8),)),
        ("identity_status", (pid.is_null(32),))) if any(nulls)]
    return {
        "identifiers": ids,
        "withdrawn": cx_withdrawn(pid, 3),
        "cleared": cleared,
        "identity_status": status or None,
        "ins_usable": status not in UNRELIABLE_STATUSES,
        "family": pid.get(5, 1, 1, 1) or pid.get(5, 1, 1),
        "given": pid.get(5, 1, 2),
        "birth_date": pid.get(7, 1, 1)[:8] or None,
        "sex": pid.get(8) or None,
        "death": pid.get(30) == "Y",
    }


def source(exchange: Exchange) -> dict[str, Any]:
    h = exchange.headers
    return {"channel": exchange.channel, "message_type": h.get("message_type") or "",
            "trigger_event": h.get("trigger_event") or "",
            "control_id": h.get("control_id") or "",
            "sending_application": h.get("sending_application") or "",
            "sending_facility": h.get("sending_facility") or "",
            "received_at": h.get("received_at")}


def envelope(exchange: Exchange, patient: dict[str, Any] | None,
             events: list[dict[str, Any]]) -> Exchange:
    """Set the exchange body to the events envelope the timeline destination applies.

    Every event has a `key` unique within its family (movement id, order number, document
    id…): the destination applies (message id, event key) once, which is what makes a
    redelivery or an operator's replay change nothing.
    """
    exchange.body = {
        "format": "parcours.events", "version": ENVELOPE_VERSION,
        "message_id": exchange.message_id, "source": source(exchange),
        "patient": patient, "events": events,
    }
    exchange.events = list(events)
    exchange.content_type = CONTENT_TYPE
    return exchange


def facility(msg: Message | None, exchange: Exchange) -> str:
    """The facility that owns visit and movement numbers: MSH-4 (HL7 v2.5.1 §2.14.9.4)."""
    return (msg.get("MSH-4.1") if msg else "") or exchange.headers.get("sending_facility") or ""
