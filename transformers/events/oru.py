"""ORU^R01 → "result" events (one per OBR) with normalised observations; ORU/MDM carrying a
CDA → "document" events.

HL7 v2.5.1 chapter 7 (§7.3.1 ORU^R01, OBR, OBX; table 0085 OBX-11: C corrects a result sent
before, D deletes it) and the LOINC/UCUM normalisation of issue #4 (`transformers.normalise`):
each observation keeps its original code, value and unit and the performing laboratory.

Documents: ANS CI-SIS "Transmission de documents CDA en HL7 v2" — the CDA in an OBX of type
ED (^TEXT^XML^Base64^…); ORC-1 NW = initial transmission, RO (or MDM^T10) = replacement,
CA = deletion; the DMP metadata as OBX coded `^MetaDMPMSS` (MASQUE_PS, INVISIBLE_PATIENT,
INVISIBLE_REP_LEGAUX = INVISIBLE_REPRESENTANTS_LEGAUX, …) with value Y/N.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers.exchange import Exchange
from transformers.hl7.reader import Message, Segment

from .cda import decode_ed, document_event
from .common import EventError, envelope, facility, hl7_time, patient_from_pid, person

MASKING_SYSTEM = "MetaDMPMSS"
MASKING_ALIASES = {"INVISIBLE_REP_LEGAUX": "INVISIBLE_REPRESENTANTS_LEGAUX"}
MASKING_CODES = frozenset({"MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX",
                           "CONNEXION_SECRETE"})
ORDER_CONTROL_ACTION = {"NW": "new", "RO": "replace", "RP": "replace", "XO": "replace",
                        "CA": "delete", "OC": "delete", "DC": "delete"}
MDM_TRIGGER_ACTION = {"T02": "new", "T04": None, "T10": "replace", "T11": "delete"}


def masking_flags(msg: Message) -> dict[str, bool]:
    flags: dict[str, bool] = {}
    for obx in msg.segments_named("OBX"):
        if obx.get(3, 1, 3) != MASKING_SYSTEM:
            continue
        code = MASKING_ALIASES.get(obx.get(3, 1, 1), obx.get(3, 1, 1))
        if code in MASKING_CODES:
            flags[code] = obx.get(5, 1, 1).upper() == "Y"
    return flags


def _embedded_documents(msg: Message) -> list[bytes]:
    docs = []
    for obx in msg.segments_named("OBX"):
        if obx.get(2) != "ED" or obx.get(3, 1, 3) == MASKING_SYSTEM:
            continue
        comps = obx.components(5)
        if len(comps) >= 3 and comps[2].upper() not in ("XML", ""):
            continue  # a PDF or an image: not a CDA
        data = decode_ed(comps)
        if data is not None:
            docs.append(data)
    return docs


def _document_action(msg: Message, trigger: str) -> str | None:
    orc1 = msg.get("ORC-1")
    if orc1 in ORDER_CONTROL_ACTION:
        return ORDER_CONTROL_ACTION[orc1]
    return MDM_TRIGGER_ACTION.get(trigger)


def document_events(msg: Message, trigger: str, sender: str = "") -> list[dict[str, Any]]:
    flags = masking_flags(msg)
    action = _document_action(msg, trigger)
    return [document_event(d, action=action, masking=flags, sender=sender)
            for d in _embedded_documents(msg)]


def _groups(msg: Message) -> list[tuple[Segment | None, Segment, list[Segment]]]:
    """(ORC, OBR, its OBX) for each OBR, in message order (ORU_R01 ORDER_OBSERVATION)."""
    groups: list[tuple[Segment | None, Segment, list[Segment]]] = []
    orc: Segment | None = None
    for seg in msg.segments:
        if seg.name == "ORC":
            orc = seg
        elif seg.name == "OBR":
            groups.append((orc, seg, []))
        elif seg.name == "OBX" and groups:
            groups[-1][2].append(seg)
    return groups


def _normalise(msh_raw: str, obx: list[Segment], charset: str) -> list[dict[str, Any]]:
    """The group's OBX through issue #4's normalisation, as JSON-ready dicts."""
    from transformers.lab.er7 import observations_from_oru
    from transformers.lab.transformer import context, plain
    from transformers.normalise import normalise_observations

    text = "\r".join([msh_raw] + [s.raw for s in obx])
    sender, raw = observations_from_oru(text, charset)
    ctx = context()
    result = normalise_observations(raw, sender=sender, catalogue=ctx.catalogue,
                                    mappings=ctx.mappings)
    out = []
    for o, r in zip(result.observations, raw, strict=True):
        item = plain(o)
        item["key"] = f"{r.code}^{r.coding_system}|{r.set_id}"
        item["at"] = hl7_time(o.observed_at)
        out.append(item)
    return out


def _shared_items(exchange: Exchange | None, msg: Message
                  ) -> Callable[[list[Segment]], list[dict[str, Any]]] | None:
    """The group's observations out of the message's one shared normalisation, when `msg` is
    the reading it was computed from; None otherwise (each group is normalised alone)."""
    if exchange is None:
        return None
    from transformers.lab.er7 import Er7Error
    from transformers.lab.transformer import shared_normalisation

    try:
        shared = shared_normalisation(exchange)
    except Er7Error:
        return None
    if shared.message is not msg:
        return None

    def items(obx: list[Segment]) -> list[dict[str, Any]]:
        out = []
        for seg in obx:
            i = shared.index[id(seg)]
            r = shared.raw[i]
            item = dict(shared.observations[i])  # the shared one stays as normalise_lab's
            item["key"] = f"{r.code}^{r.coding_system}|{r.set_id}"
            item["at"] = hl7_time(shared.result.observations[i].observed_at)
            out.append(item)
        return out

    return items


def result_events(msg: Message, fac: str, exchange: Exchange | None = None
                  ) -> list[dict[str, Any]]:
    shared = _shared_items(exchange, msg)
    events = []
    for orc, obr, obx in _groups(msg):
        filler = obr.get(3, 1, 1) or (orc.get(3, 1, 1) if orc else "")
        placer = obr.get(2, 1, 1) or (orc.get(2, 1, 1) if orc else "")
        if not (filler or placer):
            raise EventError(f"OBR {obr.get(1)}: neither placer (OBR-2) nor filler (OBR-3) "
                             "order number")
        code = obr.get(4, 1, 1)
        kept = [s for s in obx if s.get(3, 1, 3) != MASKING_SYSTEM]
        observations = (shared(kept) if shared is not None
                        else _normalise(msg.msh.raw, kept, msg.charset))
        events.append({
            "type": "result", "key": f"{fac}|{filler or placer}|{code}",
            "action": "delete" if orc is not None and orc.get(1) == "CA" else "upsert",
            "at": hl7_time(obr.get(7, 1, 1)) or hl7_time(obr.get(22, 1, 1))
            or hl7_time(msg.get("MSH-7.1")),
            "code": {"code": code, "text": obr.get(4, 1, 2), "system": obr.get(4, 1, 3)},
            "placer": placer or None, "filler": filler or None,
            "status": obr.get(25) or None, "ordering_provider": person(obr, 16),
            "observations": observations,
        })
    return events


def oru_events(exchange: Exchange) -> Exchange | None:
    """ORU^R01: document events when it carries a CDA, else one result event per OBR."""
    msg = exchange.message
    if msg is None or exchange.headers.get("message_type") != "ORU":
        return None
    patient = patient_from_pid(msg)
    trigger = exchange.headers.get("trigger_event") or ""
    events = document_events(msg, trigger, facility(msg, exchange))
    if not events:
        events = result_events(msg, facility(msg, exchange), exchange)
    return envelope(exchange, patient, events)


def mdm_events(exchange: Exchange) -> Exchange | None:
    """MDM^T02/T04/T10 with the CDA in OBX-5 → document events (TXA for the action)."""
    msg = exchange.message
    if msg is None:
        return cda_fallback(exchange)
    if exchange.headers.get("message_type") != "MDM":
        return None
    trigger = exchange.headers.get("trigger_event") or ""
    events = document_events(msg, trigger, facility(msg, exchange))
    if not events:
        raise EventError("MDM without a CDA document in an OBX of type ED (base64)")
    return envelope(exchange, patient_from_pid(msg), events)


def cda_fallback(exchange: Exchange) -> Exchange | None:
    """`mdm_events` on a documents route also takes CDA files from folder channels."""
    from .cda import cda_events

    return cda_events(exchange)
