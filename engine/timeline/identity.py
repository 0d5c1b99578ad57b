"""Patient identity: find or create the patient of a message, link identifiers, merge.

Rules (docs/timeline.md, "Identity"):
- A facility's local id (authority + value) is authoritative for that facility's feed: it is
  looked up first. The INS (PID-3 with CX-5 = INS or an INS OID) links identities across
  facilities — the same INS from two facilities is one patient — unless PID-32 says the
  identity is not reliable (PROV, DOUTE, FICTI; French RNIV rules).
- An INS already held by another patient than the local id's is a conflict: it is recorded
  in identity_history and not linked; nothing is merged without an A40.
- A40 moves everything of the absorbed patient (MRG-1) to the survivor (PID-3); A47 changes
  an identifier's value, merging when the new value already belongs to someone else.
- Every change is written to identity_history.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from .models import (
    appointments,
    care_circle,
    consents,
    documents,
    identity_history,
    movements,
    observations,
    orders,
    patient_identifiers,
    patients,
    stays,
    timeline_events,
)

MOVED_TABLES = (patient_identifiers, stays, movements, timeline_events, observations,
                documents, orders, appointments, consents, care_circle)


def history(conn: Connection, patient_id: int, action: str, message_id: int | None,
            detail: dict[str, Any] | None = None) -> None:
    conn.execute(insert(identity_history).values(
        patient_id=patient_id, at=datetime.now(UTC), message_id=message_id, action=action,
        detail=json.dumps(detail or {}, ensure_ascii=False, sort_keys=True)))


def survivor(conn: Connection, patient_id: int) -> int:
    """Follow merged_into to the patient that holds the record now."""
    seen = set()
    while patient_id not in seen:
        seen.add(patient_id)
        nxt = conn.execute(select(patients.c.merged_into)
                           .where(patients.c.id == patient_id)).scalar()
        if nxt is None:
            return patient_id
        patient_id = int(nxt)
    return patient_id


def lookup(conn: Connection, authority: str, value: str) -> int | None:
    pid = conn.execute(select(patient_identifiers.c.patient_id).where(
        patient_identifiers.c.authority == authority,
        patient_identifiers.c.value == value)).scalar()
    return survivor(conn, int(pid)) if pid is not None else None


def _link(conn: Connection, patient_id: int, ident: dict[str, str],
          message_id: int | None) -> None:
    conn.execute(insert(patient_identifiers).values(
        patient_id=patient_id, authority=ident["authority"], namespace=ident.get("namespace"),
        value=ident["value"], type=ident["type"], created_at=datetime.now(UTC),
        message_id=message_id))
    if ident["type"] == "INS":
        conn.execute(update(patients).where(patients.c.id == patient_id).values(
            ins=ident["value"], ins_authority=ident["authority"]))
    history(conn, patient_id, "identifier_linked", message_id,
            {"authority": ident["authority"], "type": ident["type"]})


def resolve(conn: Connection, block: dict[str, Any], message_id: int) -> int:
    """The patient of an envelope's `patient` block; created when nobody matches."""
    now = datetime.now(UTC)
    ids = block["identifiers"]
    usable_ins = bool(block.get("ins_usable", True))
    local = [i for i in ids if i["type"] != "INS"]
    ins = [i for i in ids if i["type"] == "INS"]
    found_local = [p for p in (lookup(conn, i["authority"], i["value"]) for i in local) if p]
    found_ins = [p for p in (lookup(conn, i["authority"], i["value"]) for i in ins) if p]
    if found_local:
        patient_id = found_local[0]
        if len(set(found_local)) > 1:
            history(conn, patient_id, "conflict", message_id,
                    {"reason": "local identifiers of one message belong to several patients",
                     "patients": sorted(set(found_local))})
    elif found_ins and usable_ins:
        patient_id = found_ins[0]
    else:
        patient_id = int(conn.execute(insert(patients).values(
            created_at=now, updated_at=now).returning(patients.c.id)).scalar_one())
        history(conn, patient_id, "created", message_id)
    for ident in ids:
        owner = lookup(conn, ident["authority"], ident["value"])
        if owner == patient_id:
            continue
        if owner is not None:
            history(conn, patient_id, "conflict", message_id,
                    {"reason": "identifier held by another patient", "other": owner,
                     "authority": ident["authority"], "type": ident["type"]})
            continue
        if ident["type"] == "INS" and not usable_ins:
            continue
        _link(conn, patient_id, ident, message_id)
    _demographics(conn, patient_id, block, message_id)
    return patient_id


def _demographics(conn: Connection, patient_id: int, block: dict[str, Any],
                  message_id: int) -> None:
    """Names and status from the newest message only (a replayed old message changes nothing)."""
    row = conn.execute(select(patients).where(patients.c.id == patient_id)).mappings().one()
    if row["demographics_message_id"] is not None and row["demographics_message_id"] > message_id:
        return
    new = {k: block.get(k) or row[k] for k in ("family", "given", "birth_date", "sex")}
    new["identity_status"] = block.get("identity_status") or row["identity_status"]
    changed = {k for k, v in new.items() if v != row[k]}
    conn.execute(update(patients).where(patients.c.id == patient_id).values(
        **new, demographics_message_id=message_id, updated_at=datetime.now(UTC)))
    if changed and row["demographics_message_id"] is not None:
        history(conn, patient_id, "demographics_updated", message_id,
                {"fields": sorted(changed)})


def merge(conn: Connection, absorbed: int, into: int, message_id: int | None,
          reason: str) -> None:
    """Move everything of `absorbed` to `into` (A40, A47); the absorbed row stays, pointing."""
    if absorbed == into:
        return
    for table in MOVED_TABLES:
        conn.execute(update(table).where(table.c.patient_id == absorbed)
                     .values(patient_id=into))
    conn.execute(update(patients).where(patients.c.id == absorbed).values(
        merged_into=into, updated_at=datetime.now(UTC)))
    history(conn, absorbed, f"{reason}_absorbed", message_id, {"into": into})
    history(conn, into, f"{reason}_survivor", message_id, {"absorbed": absorbed})


def apply_merge(conn: Connection, survivor_id: int, old_ids: list[dict[str, str]],
                message_id: int) -> None:
    """A40: MRG-1 identifiers' patient → survivor; unknown ones are linked to the survivor so
    a later message with the old id lands on the survivor (out-of-order merge)."""
    for ident in old_ids:
        owner = lookup(conn, ident["authority"], ident["value"])
        if owner is None:
            _link(conn, survivor_id, ident, message_id)
        elif owner != survivor_id:
            merge(conn, owner, survivor_id, message_id, "merge")


def change_identifier(conn: Connection, block: dict[str, Any], old_ids: list[dict[str, str]],
                      message_id: int) -> None:
    """A47: MRG-1 (old value) → PID-3 (new value) of the same authority, before `resolve`."""
    new_ids = block["identifiers"]
    for old in old_ids:
        new = next((n for n in new_ids if n["authority"] == old["authority"]), None)
        if new is None:
            new = next((n for n in new_ids if n["type"] != "INS"), None)
        if new is None:
            continue
        old_owner = lookup(conn, old["authority"], old["value"])
        if old_owner is None:
            continue
        new_owner = lookup(conn, new["authority"], new["value"])
        if new_owner is None:
            conn.execute(update(patient_identifiers).where(
                patient_identifiers.c.authority == old["authority"],
                patient_identifiers.c.value == old["value"]).values(
                    authority=new["authority"], value=new["value"],
                    namespace=new.get("namespace"), type=new["type"]))
            history(conn, old_owner, "identifier_changed", message_id,
                    {"authority": new["authority"], "old": old["value"], "new": new["value"]})
        elif new_owner != old_owner:
            merge(conn, old_owner, new_owner, message_id, "change_identifier")
