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
- Identity vigilance (RNIV, the INS referential; issue #15): an arrival whose INS contradicts
  the INS held for its local id, or whose family name, birth date or sex contradict a
  qualified (VALI/QUAL) identity, is a conflict held for an operator (`vigilance`), never a
  merge, a link or an overwrite.
- HL7's explicit null `""` (v2.5.1 §2.5.3) in PID-3 withdraws an identifier (the INS of a
  PAM-FR A47/A08/A31): it is removed from the patient, kept in identity_history, and stops
  matching; in PID-5/7/8/32 it clears the value.
- Every change is written to identity_history.
"""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from engine.timeline.models import (
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

# PID-32 statuses of a qualified identity (RNIV: "identité qualifiée", the INS retrieved and
# the identity validated); its traits are changed only by the INS referential, not by a feed.
QUALIFIED_STATUSES = frozenset({"VALI", "QUAL"})
TRAITS = ("family", "birth_date", "sex")
DEMOGRAPHICS = ("family", "given", "birth_date", "sex")

MOVED_TABLES = (patient_identifiers, stays, movements, timeline_events, observations,
                documents, orders, appointments, consents, care_circle)


_HISTORY = insert(identity_history)


def history(conn: Connection, patient_id: int, action: str, message_id: int | None,
            detail: dict[str, Any] | None = None) -> None:
    conn.execute(_HISTORY, {
        "patient_id": patient_id, "at": datetime.now(UTC), "message_id": message_id,
        "action": action, "detail": json.dumps(detail or {}, ensure_ascii=False,
                                               sort_keys=True)})


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


# The identifier's holder and whether that record was merged away, in one statement (built
# once: composing a statement through SQLAlchemy Core costs more than running it).
_HOLDER = (select(patient_identifiers.c.patient_id, patients.c.merged_into)
           .join(patients, patients.c.id == patient_identifiers.c.patient_id)
           .where(patient_identifiers.c.authority == bindparam("authority"),
                  patient_identifiers.c.value == bindparam("value")))


def lookup(conn: Connection, authority: str, value: str) -> int | None:
    row = conn.execute(_HOLDER, {"authority": authority, "value": value}).first()
    if row is None:
        return None
    return int(row[0]) if row[1] is None else survivor(conn, int(row[1]))


class Lookups:
    """The holders of one envelope's identifiers, asked once per apply: vigilance, target
    and resolve ask about the same few identifiers, and only resolve's own links change the
    answer (it records them here)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._known: dict[tuple[str, str], int | None] = {}

    def __call__(self, authority: str, value: str) -> int | None:
        key = (authority, value)
        if key not in self._known:
            self._known[key] = lookup(self.conn, authority, value)
        return self._known[key]

    def linked(self, authority: str, value: str, patient_id: int) -> None:
        self._known[(authority, value)] = patient_id


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


def resolve(conn: Connection, block: dict[str, Any], message_id: int,
            holders: Lookups | None = None) -> int:
    """The patient of an envelope's `patient` block; created when nobody matches."""
    holder = holders or Lookups(conn)
    now = datetime.now(UTC)
    ids = block["identifiers"]
    usable_ins = bool(block.get("ins_usable", True))
    local = [i for i in ids if i["type"] != "INS"]
    ins = [i for i in ids if i["type"] == "INS"]
    found_local = [p for p in (holder(i["authority"], i["value"]) for i in local) if p]
    found_ins = [p for p in (holder(i["authority"], i["value"]) for i in ins) if p]
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
        owner = holder(ident["authority"], ident["value"])
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
        holder.linked(ident["authority"], ident["value"], patient_id)
    for gone in block.get("withdrawn") or ():
        withdraw(conn, patient_id, gone, message_id)
    _demographics(conn, patient_id, block, message_id)
    return patient_id


def withdraw(conn: Connection, patient_id: int, gone: dict[str, str],
             message_id: int) -> None:
    """Remove an identifier sent as `""` (HL7 v2.5.1 §2.5.3; PAM-FR INS withdrawal) from the
    patient: a withdrawn INS is any INS of the patient, a local id that authority's. The value
    is kept in identity_history, so the record still tells what was withdrawn and when."""
    q = select(patient_identifiers).where(patient_identifiers.c.patient_id == patient_id)
    if gone["type"] == "INS":
        q = q.where(patient_identifiers.c.type == "INS")
    else:
        q = q.where(patient_identifiers.c.authority == gone["authority"],
                    patient_identifiers.c.type != "INS")
    for row in conn.execute(q).mappings().all():
        conn.execute(delete(patient_identifiers).where(patient_identifiers.c.id == row["id"]))
        history(conn, patient_id, "identifier_withdrawn", message_id,
                {"authority": row["authority"], "type": row["type"], "value": row["value"],
                 "linked_by_message": row["message_id"]})
    if gone["type"] == "INS":
        conn.execute(update(patients).where(patients.c.id == patient_id).values(
            ins=None, ins_authority=None, updated_at=datetime.now(UTC)))


def _norm(value: Any) -> str:
    """Traits compared as the INS referential writes them: case, accents, spaces, hyphens
    and apostrophes do not make another person."""
    text = unicodedata.normalize("NFKD", str(value or ""))
    return "".join(c for c in text if c.isalnum()).upper()


def target(conn: Connection, block: dict[str, Any], holders: Lookups | None = None
           ) -> int | None:
    """The patient `resolve` would pick, without changing anything (None: a new patient)."""
    holder = holders or Lookups(conn)
    ids = block["identifiers"]
    for i in ids:
        if i["type"] != "INS":
            found = holder(i["authority"], i["value"])
            if found is not None:
                return found
    if block.get("ins_usable", True):
        for i in ids:
            if i["type"] == "INS":
                found = holder(i["authority"], i["value"])
                if found is not None:
                    return found
    return None


def vigilance(conn: Connection, block: dict[str, Any], message_id: int,
              holders: Lookups | None = None) -> list[dict[str, Any]]:
    """The identity conflicts an arrival raises against the record it would land on.

    - `ins_mismatch`: the record holds an INS of the same authority with another value (the
      same local id, two persons: PAM-FR identity vigilance).
    - `demographics_mismatch`: the record is a qualified identity (PID-32 VALI/QUAL) and the
      arrival's family name, birth date or sex differ.
    Each conflict carries its evidence: both INS, both sets of traits, both message ids.
    """
    patient_id = target(conn, block, holders)
    if patient_id is None:
        return []
    row = conn.execute(select(patients).where(patients.c.id == patient_id)).mappings().one()
    held = conn.execute(select(patient_identifiers).where(
        patient_identifiers.c.patient_id == patient_id,
        patient_identifiers.c.type == "INS")).mappings().all()
    local = [{"authority": i["authority"], "value": i["value"]}
             for i in block["identifiers"] if i["type"] != "INS"]
    mine = {k: row[k] for k in (*DEMOGRAPHICS, "identity_status")}
    theirs = {k: block.get(k) for k in (*DEMOGRAPHICS, "identity_status")}
    out: list[dict[str, Any]] = []
    for ins in (i for i in block["identifiers"] if i["type"] == "INS"):
        for h in held:
            if h["authority"] == ins["authority"] and h["value"] != ins["value"]:
                out.append({
                    "kind": "ins_mismatch", "patient_id": patient_id,
                    "other_message_id": h["message_id"],
                    "evidence": {"local_ids": local, "authority": ins["authority"],
                                 "held_ins": h["value"], "arriving_ins": ins["value"],
                                 "held": mine, "arriving": theirs}})
    if (row["identity_status"] or "").upper() in QUALIFIED_STATUSES:
        differ = [k for k in TRAITS if block.get(k) and row[k]
                  and _norm(block.get(k)) != _norm(row[k])]
        if differ:
            out.append({
                "kind": "demographics_mismatch", "patient_id": patient_id,
                "other_message_id": row["demographics_message_id"],
                "evidence": {"local_ids": local, "fields": differ,
                             "held_ins": row["ins"],
                             "arriving_ins": next((i["value"] for i in block["identifiers"]
                                                   if i["type"] == "INS"), None),
                             "held": mine, "arriving": theirs}})
    return out


def _demographics(conn: Connection, patient_id: int, block: dict[str, Any],
                  message_id: int) -> None:
    """Names and status from the newest message only (a replayed old message changes nothing)."""
    row = conn.execute(select(patients).where(patients.c.id == patient_id)).mappings().one()
    if row["demographics_message_id"] is not None and row["demographics_message_id"] > message_id:
        return
    cleared = set(block.get("cleared") or ())  # HL7 v2.5.1 §2.5.3: `""` deletes the value
    new = {k: None if k in cleared else (block.get(k) or row[k]) for k in DEMOGRAPHICS}
    new["identity_status"] = None if "identity_status" in cleared else (
        block.get("identity_status") or row["identity_status"])
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
    withdrawn = block.get("withdrawn") or []
    for old in old_ids:
        old_owner = lookup(conn, old["authority"], old["value"])
        gone = next((w for w in withdrawn if w["authority"] == old["authority"]
                     or (w["type"] == "INS" and old["type"] == "INS")), None)
        if gone is not None:  # PID-3 says `""` for this identifier: withdrawn, not renamed
            if old_owner is not None:
                withdraw(conn, old_owner, {**gone, "authority": old["authority"]}, message_id)
            continue
        new = next((n for n in new_ids if n["authority"] == old["authority"]), None)
        if new is None and old["type"] != "INS":  # an INS never becomes a local id
            new = next((n for n in new_ids if n["type"] != "INS"), None)
        if new is None:
            continue
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
