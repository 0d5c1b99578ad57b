"""Reading a referral (HL7 v2.5.1 chapter 11, patient referral: REF^I12/I13/I14) and
checking that it carries what a support structure's workflow needs.

Segments read (§11.6): RF1 referral information, PRD provider data (one per provider,
PRD-1 role from table 0286: RP referring provider, RT referred-to provider, PP primary care
provider, CP consulting provider), PID, PV1, DG1 diagnoses, OBR/OBX the clinical content,
NTE notes. Pure: no engine import, plain JSON-able values out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .ack import AckError
from .reader import Message, Segment

# HL7 table 0283 referral status.
REFERRAL_STATUS = {"A": "accepted", "P": "pending", "R": "rejected", "E": "expired"}
# HL7 table 0280 referral priority.
REFERRAL_PRIORITY = {"S": "stat", "A": "asap", "R": "routine"}
# HL7 table 0281 referral type.
REFERRAL_TYPE = {"Lab": "laboratory", "Rad": "radiology", "Med": "medical",
                 "Skn": "skilled nursing", "Psy": "psychiatric", "Hom": "home care"}
# HL7 table 0282 referral disposition.
REFERRAL_DISPOSITION = {"WR": "send written report", "RP": "return patient after evaluation",
                        "AM": "assume management", "SO": "second opinion"}
# HL7 table 0336 referral reason.
REFERRAL_REASON = {"S": "second opinion", "P": "patient preference", "O": "provider ordered",
                   "W": "work load"}
# HL7 table 0286 provider role.
REFERRING, REFERRED_TO = "RP", "RT"
# French professional and structure identifier types as sent in PRD-7.2 (ANS: RPPS and
# ADELI for professionals, FINESS for structures).
STRUCTURE_ID_TYPES = frozenset({"FINESS", "FINEG", "FINEJ", "SIRET"})

Check = Callable[[str], bool]


def _coded(seg: Segment, n: int, table: dict[str, str]) -> dict[str, str] | None:
    code = seg.get(n, 1, 1).strip()
    if not code:
        return None
    return {"code": code, "display": seg.get(n, 1, 2).strip() or table.get(code, ""),
            "system": seg.get(n, 1, 3).strip()}


def _ids(seg: Segment, n: int) -> list[dict[str, str]]:
    """PRD-7 (PI: id ^ type ^ other qualifying info), every repetition."""
    out = []
    for r in range(1, len(seg.repetitions(n)) + 1):
        value = seg.get(n, r, 1).strip()
        if value:
            out.append({"value": value, "type": seg.get(n, r, 2).strip().upper()})
    return out


def provider(seg: Segment) -> dict[str, Any]:
    """One PRD: role, name (PRD-2 XPN), identifiers (PRD-7), organisation name (PRD-4.9,
    the location's description, or PRD-2 when it names a structure only)."""
    ids = _ids(seg, 7)
    structure = next((i["value"] for i in ids if i["type"] in STRUCTURE_ID_TYPES), None)
    person = next((i for i in ids if i["type"] not in STRUCTURE_ID_TYPES), None)
    return {
        "role": seg.get(1, 1, 1).strip().upper(),
        "family": seg.get(2, 1, 1, 1).strip() or seg.get(2, 1, 1).strip(),
        "given": seg.get(2, 1, 2).strip(),
        "organisation": seg.get(4, 1, 9).strip() or None,
        "identifiers": ids,
        "professional_id": person["value"] if person else None,
        "structure_id": structure,
    }


def providers(msg: Message) -> list[dict[str, Any]]:
    return [provider(s) for s in msg.segments_named("PRD")]


def referral_id(msg: Message) -> dict[str, str] | None:
    """RF1-6 originating referral identifier (EI: id ^ namespace ^ universal id ^ type):
    the key of the request, qualified by its assigning authority."""
    rf1 = msg.segment("RF1")
    if rf1 is None:
        return None
    value = rf1.get(6, 1, 1).strip()
    if not value:
        return None
    authority = rf1.get(6, 1, 3).strip() or rf1.get(6, 1, 2).strip()
    return {"value": value, "authority": authority}


def read_referral(msg: Message) -> dict[str, Any]:
    """The request as the referral model needs it (JSON values)."""
    rf1 = msg.segment("RF1")
    if rf1 is None:
        raise ValueError("no RF1 segment")
    status = rf1.get(1, 1, 1).strip().upper()
    diagnoses = [{"code": d.get(3, 1, 1), "display": d.get(3, 1, 2) or d.get(4),
                  "system": d.get(3, 1, 3)} for d in msg.segments_named("DG1")
                 if d.get(3, 1, 1) or d.get(4)]
    notes = [n.get(3) for n in msg.segments_named("NTE") if n.get(3)]
    observations = [{"code": o.get(3, 1, 1), "display": o.get(3, 1, 2), "value": o.get(5)}
                    for o in msg.segments_named("OBX") if o.get(5)]
    requested = [{"code": o.get(4, 1, 1), "display": o.get(4, 1, 2)}
                 for o in msg.segments_named("OBR") if o.get(4, 1, 1) or o.get(4, 1, 2)]
    return {
        "id": referral_id(msg),
        "status_code": status or None,
        "status": REFERRAL_STATUS.get(status),
        "priority": _coded(rf1, 2, REFERRAL_PRIORITY),
        "referral_type": _coded(rf1, 3, REFERRAL_TYPE),
        "disposition": _coded(rf1, 4, REFERRAL_DISPOSITION),
        "category": rf1.get(5, 1, 1).strip() or None,
        "effective": rf1.get(7, 1, 1).strip() or None,
        "expires": rf1.get(8, 1, 1).strip() or None,
        "processed": rf1.get(9, 1, 1).strip() or None,
        "reason": _coded(rf1, 10, REFERRAL_REASON),
        "external_ids": [rf1.get(11, r, 1) for r in range(1, len(rf1.repetitions(11)) + 1)
                         if rf1.get(11, r, 1)],
        "providers": providers(msg),
        "diagnoses": diagnoses,
        "notes": notes,
        "observations": observations,
        "requested": requested,
    }


def referral_problems(msg: Message, trigger: str, known_structure: Check | None = None
                      ) -> list[AckError]:
    """What the workflow cannot do without, as ERR segments (table 0357): the request's key
    (RF1-6), the patient (PID-3), for a new request (I12) the structure it is addressed to
    (PRD with role RT), and that structure must be one Parcours knows (`known_structure`;
    None skips that check)."""
    problems: list[AckError] = []
    rf1 = msg.segment("RF1")
    if rf1 is None:
        problems.append(AckError.at(100, "required segment RF1 is missing (HL7 v2.5.1 "
                                         "§11.3: every REF carries its referral)", "RF1"))
    elif referral_id(msg) is None:
        problems.append(AckError.at(101, "RF1-6 originating referral identifier is missing: "
                                         "it is the key of the request", "RF1-6"))
    pid = msg.segment("PID")
    if pid is None:
        problems.append(AckError.at(100, "required segment PID is missing: a request is for "
                                         "a patient", "PID"))
    elif not pid.get(3, 1, 1).strip():
        problems.append(AckError.at(101, "PID-3 patient identifier is missing", "PID-3"))
    targets = [p for p in providers(msg) if p["role"] == REFERRED_TO]
    if trigger == "I12" and not targets:
        problems.append(AckError.at(101, "no PRD with role RT (referred-to provider, HL7 table "
                                         "0286): the request names no support structure",
                                    "PRD-1"))
    if known_structure is not None:
        for t in targets:
            sid = t["structure_id"]
            if sid is None:
                problems.append(AckError.at(101, "the referred-to PRD has no structure "
                                                 "identifier (PRD-7 with type FINESS)",
                                            "PRD-7"))
            elif not known_structure(sid):
                problems.append(AckError.at(204, f"referred-to structure {sid} is not a "
                                                 "support structure known here", "PRD-7"))
    return problems
