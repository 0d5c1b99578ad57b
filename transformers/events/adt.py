"""ADT (IHE PAM and its French extension, HL7 v2.5 `2.5^FRA^2.11`) → movement events.

Sources of the rules:
- IHE ITI TF-2b §3.31 (Patient Encounter Management) and IHE PAM France 2.11 (movement
  management with the ZBE segment: ZBE-1 movement id, ZBE-2 start, ZBE-4 action
  INSERT/UPDATE/CANCEL, ZBE-6 original trigger of an UPDATE/CANCEL, ZBE-7/8 medical and
  nursing wards; ZFA DMP status, consent and opposition).
- HL7 v2.5.1 chapter 3: A01 admit, A02 transfer, A03 discharge, A04 register, A05 pre-admit,
  A06/A07 change of class, A08/A28/A31 demographics, A11/A12/A13/A38 cancels, A21/A22 leave
  of absence, A14/A15/A16 pending admit/transfer/discharge and their cancels A27/A26/A25,
  A54 change of attending doctor and its cancel A55, A40 merge, A47 change of identifier;
  PV1-2 class, PV1-3 location, PV1-7/8/9/17 attending/referring/consulting/admitting
  doctors, PV1-19 visit number, PV1-44/45 times.
- HL7 v2.5.1 §15.4.7 ROL (role): ROL-2 action (AD/UP/DE/UC), ROL-3 role, ROL-4 person; the
  people it names (a médecin traitant, a referring doctor) join the patient's care team
  unless the action is DE.

Without ZBE the movement is identified by visit + trigger + time, and a cancellation names
the trigger it cancels (A11 → A01/A04, A12 → A02, A13 → A03, A38 → A05, A52 → A21,
A53 → A22); the destination finds the movement it cancels, or keeps the cancellation until
the movement arrives (out-of-order feeds).
"""

from __future__ import annotations

from typing import Any

from transformers.exchange import Exchange
from transformers.hl7.reader import Message, Segment

from .common import (
    EventError,
    cx_list,
    envelope,
    facility,
    hl7_time,
    patient_from_pid,
    people,
)

MOVEMENT_TRIGGERS = frozenset({"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A21", "A22",
                               "A14", "A15", "A16", "A54"})
# What each cancellation cancels (HL7 v2.5.1 §3.3.11–3.3.13, §3.3.25–3.3.27, §3.3.38, §3.3.55;
# IHE PAM §3.31.4).
CANCELS: dict[str, tuple[str, ...]] = {
    "A11": ("A01", "A04"), "A12": ("A02",), "A13": ("A03",), "A38": ("A05",),
    "A52": ("A21",), "A53": ("A22",), "A27": ("A14",), "A26": ("A15",), "A25": ("A16",),
    "A55": ("A54",),
}
DEMOGRAPHICS = frozenset({"A08", "A28", "A31"})
ACTIONS = frozenset({"INSERT", "UPDATE", "CANCEL"})
DOCTOR_FIELDS = {"attending": 7, "referring": 8, "consulting": 9, "admitting": 17}


def _ward(seg: Segment, n: int) -> dict[str, str] | None:
    """ZBE-7/8 are XON: name in .1, identifier in .10 (IHE PAM France §4.2, ZBE)."""
    name, ident = seg.get(n, 1, 1), seg.get(n, 1, 10)
    if not name and not ident:
        return None
    return {"name": name, "id": ident}


def read_zbe(msg: Message) -> dict[str, Any] | None:
    zbe = msg.segment("ZBE")
    if zbe is None or not zbe.get(1, 1, 1):
        return None
    # Some senders (the ANS "sortie" sample among them) put the action one field late, after
    # an empty ZBE-4; the fields after it are then shifted by one as well.
    shift = 0
    if zbe.get(4).upper() not in ACTIONS and zbe.get(5).upper() in ACTIONS:
        shift = 1
    action = zbe.get(4 + shift).upper() or "INSERT"
    return {
        "cleared": [name for name, n in (("medical_ward", 7), ("nursing_ward", 8))
                    if zbe.is_null(n + shift)],
        "movement_id": zbe.get(1, 1, 1),
        "authority": zbe.get(1, 1, 2) or zbe.get(1, 1, 3),
        "at": hl7_time(zbe.get(2, 1, 1)),
        "action": action if action in ACTIONS else "INSERT",
        "historic": zbe.get(5 + shift) == "Y",
        "original_trigger": zbe.get(6 + shift),
        "medical_ward": _ward(zbe, 7 + shift),
        "nursing_ward": _ward(zbe, 8 + shift),
        "nature": zbe.get(9 + shift),
    }


def read_consent(msg: Message) -> dict[str, Any] | None:
    """ZFA (IHE PAM France 2.11 §4.5): DMP status, feeding opposition, consultation consent."""
    zfa = msg.segment("ZFA")
    if zfa is None:
        return None

    def yes_no(v: str) -> bool | None:
        return True if v == "Y" else False if v == "N" else None

    feeding = zfa.get(9).upper()
    consult = zfa.get(11).upper()
    return {
        "type": "consent", "key": "dmp",
        "dmp_status": zfa.get(1) or None,
        "dmp_status_at": hl7_time(zfa.get(2, 1, 1)),
        "dmp_closed_at": hl7_time(zfa.get(3, 1, 1)),
        "facility_access_authorised": yes_no(zfa.get(4)),
        "break_glass_opposition": yes_no(zfa.get(6)),
        "regulation_centre_opposition": yes_no(zfa.get(7)),
        # IO = opposition, INO = no opposition, NA / empty = not collected.
        "feeding_opposition": True if feeding == "IO" else False if feeding == "INO" else None,
        "feeding_opposition_at": hl7_time(zfa.get(10, 1, 1)),
        # IC = consent to consultation, INC = no consent, NA / empty = not collected.
        "consultation_consent": True if consult == "IC" else False if consult == "INC" else None,
        "consultation_consent_at": hl7_time(zfa.get(12, 1, 1)),
    }


def _location(pv1: Segment | None) -> dict[str, str] | None:
    if pv1 is None or not pv1.get(3):
        return None
    c = pv1.components(3) + [""] * 9
    c = [x.split("&")[0] for x in c]
    return {"point_of_care": c[0], "room": c[1], "bed": c[2],
            "facility": c[3], "building": c[6], "floor": c[7]}


def _time(msg: Message, trigger: str, zbe: dict[str, Any] | None) -> str | None:
    pv1 = msg.segment("PV1")
    candidates = [zbe["at"] if zbe else None]
    if pv1 is not None:
        if trigger == "A03":
            candidates.append(hl7_time(pv1.get(45, 1, 1)))
        elif trigger in ("A01", "A04", "A05"):
            candidates.append(hl7_time(pv1.get(44, 1, 1)))
    candidates += [hl7_time(msg.get("EVN-6.1")), hl7_time(msg.get("EVN-2.1")),
                   hl7_time(msg.get("MSH-7.1"))]
    return next((c for c in candidates if c), None)


def movement_event(msg: Message, trigger: str, fac: str) -> dict[str, Any] | None:
    pv1 = msg.segment("PV1")
    zbe = read_zbe(msg)
    visit = pv1.get(19, 1, 1) if pv1 is not None else ""
    at = _time(msg, trigger, zbe)
    if trigger == "Z99":
        if zbe is None:
            return None
        action, target = "update", zbe["original_trigger"]
    elif trigger in CANCELS:
        action = "cancel"
        target = (zbe["original_trigger"] if zbe and zbe["original_trigger"] else "")
        if zbe is not None and zbe["action"] == "CANCEL" and target:
            cancels: tuple[str, ...] = (target,)
        else:
            cancels = CANCELS[trigger]
            target = cancels[0]
    elif trigger in MOVEMENT_TRIGGERS:
        action = (zbe["action"].lower() if zbe else "insert")
        target = (zbe["original_trigger"] if zbe and action != "insert"
                  and zbe["original_trigger"] else trigger)
    else:
        return None
    if zbe is not None:
        key = f"{fac}|zbe|{zbe['authority']}|{zbe['movement_id']}"
    else:
        key = f"{fac}|{visit}|{target}|{at}"
    doctors = {role: people(pv1, n) for role, n in DOCTOR_FIELDS.items()} if pv1 else {}
    event: dict[str, Any] = {
        "type": "movement", "key": key, "action": action, "trigger": target,
        "message_trigger": trigger, "movement_id": zbe["movement_id"] if zbe else None,
        "at": at, "facility": fac, "visit_number": visit or None,
        "patient_class": pv1.get(2) if pv1 is not None else None,
        "location": _location(pv1),
        "medical_ward": zbe["medical_ward"] if zbe else None,
        "nursing_ward": zbe["nursing_ward"] if zbe else None,
        "historic": bool(zbe and zbe["historic"]),
        "doctors": {k: v for k, v in doctors.items() if v},
    }
    # HL7 v2.5.1 §2.5.3: `""` deletes what an earlier message set (an update clears it).
    cleared = list(zbe["cleared"]) if zbe else []
    if pv1 is not None:
        cleared += [name for name, n in (("location", 3), ("patient_class", 2))
                    if pv1.is_null(n)]
    if cleared:
        event["cleared"] = cleared
    if action == "cancel":
        event["cancels"] = list(cancels)
        event["by_key"] = zbe is not None
    return event


def adt_events(exchange: Exchange) -> Exchange | None:
    """ADT → movement, consent, demographics, merge and change-of-identifier events."""
    msg = exchange.message
    if msg is None or exchange.headers.get("message_type") != "ADT":
        return None
    trigger = exchange.headers.get("trigger_event") or msg.get("MSH-9.2")
    patient = patient_from_pid(msg)
    fac = facility(msg, exchange)
    events: list[dict[str, Any]] = []
    if trigger in ("A40", "A47"):
        mrg = msg.segment("MRG")
        old = cx_list(mrg, 1)
        if not old:
            raise EventError(f"{trigger} without MRG-1: nothing to merge")
        events.append({"type": "merge" if trigger == "A40" else "change_identifier",
                       "key": trigger, "absorbed": old, "at": _time(msg, trigger, None)})
    else:
        mv = movement_event(msg, trigger, fac)
        if mv is not None:
            events.append(mv)
        if trigger in DEMOGRAPHICS:
            events.append({"type": "demographics", "key": trigger,
                           "at": _time(msg, trigger, None)})
    consent = read_consent(msg)
    if consent is not None:
        consent["at"] = _time(msg, trigger, None)
        events.append(consent)
    team = care_team_event(msg)
    if team is not None:
        team["at"] = _time(msg, trigger, None)
        events.append(team)
    return envelope(exchange, patient, events)


def care_team_event(msg: Message) -> dict[str, Any] | None:
    """ROL segments (HL7 v2.5.1 §15.4.7) → the people they name, by ROL-3 role code; a ROL
    whose ROL-2 action is DE (delete) names nobody. None when no ROL names anyone."""
    doctors: dict[str, list[dict[str, str]]] = {}
    for rol in msg.segments_named("ROL"):
        if rol.get(2, 1, 1).strip().upper() == "DE":
            continue
        role = rol.get(3, 1, 1).strip().upper() or "ROL"
        doctors.setdefault(f"rol:{role}", []).extend(people(rol, 4))
    doctors = {k: v for k, v in doctors.items() if v}
    if not doctors:
        return None
    key = ";".join(f"{k}={','.join(p['id'] for p in v)}" for k, v in sorted(doctors.items()))
    return {"type": "care_team", "key": key, "doctors": doctors}
