"""Conflicts held for an operator: identity vigilance and document provenance (issue #15).

A conflict is never resolved by the engine: it is written here with its evidence and waits
for an operator (`parcours conflicts`, `/api/v1/conflicts`, the dashboard). Two sorts:

- **held** (identity): the arrival's events are kept in `envelope` and applied to nobody —
  neither to the record its local id names (it may be another person's) nor to a new one
  (that would be a duplicate). An operator applies them to the record they belong to, or
  dismisses them; either way they stay in the row.
- **not held** (documents): the arriving document is filed as a new document for its own
  patient and source; what it claimed (to replace or delete a document of another patient or
  source) is not done, and the claim is recorded here.

Re-raising an open, not held conflict with the same fingerprint counts an occurrence rather
than adding a row (one problem, one line on the operator's screen).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from engine.timeline.models import timeline_conflicts

KINDS = {
    "ins_mismatch": "INS contradicts the INS held for this local id",
    "demographics_mismatch": "demographics contradict a qualified (VALI) identity",
    "document_replace_other": "replacement names a document of another patient or source",
    "document_delete_other": "deletion names a document of another patient or source",
    "document_id_other_patient": "same source and document id already filed for another "
                                 "patient",
}


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)


def record(conn: Connection, kind: str, *, message_id: int, evidence: dict[str, Any],
           fingerprint: str, patient_id: int | None = None,
           other_patient_id: int | None = None, other_message_id: int | None = None,
           envelope: dict[str, Any] | None = None) -> int:
    """Write a conflict (or count one more occurrence of the same open one)."""
    now = datetime.now(UTC)
    fingerprint = f"{kind}|{fingerprint}"[:255]
    if envelope is None:
        row = conn.execute(select(timeline_conflicts.c.id).where(
            timeline_conflicts.c.fingerprint == fingerprint,
            timeline_conflicts.c.status == "open",
            timeline_conflicts.c.held.is_(False))).scalar()
        if row is not None:
            conn.execute(update(timeline_conflicts).where(timeline_conflicts.c.id == row)
                         .values(occurrences=timeline_conflicts.c.occurrences + 1,
                                 last_message_id=message_id, updated_at=now))
            return int(row)
    return int(conn.execute(insert(timeline_conflicts).values(
        kind=kind, status="open", held=envelope is not None, patient_id=patient_id,
        other_patient_id=other_patient_id, message_id=message_id,
        other_message_id=other_message_id, last_message_id=message_id, occurrences=1,
        fingerprint=fingerprint, evidence=_dumps(evidence),
        envelope=_dumps(envelope) if envelope is not None else None,
        created_at=now, updated_at=now).returning(timeline_conflicts.c.id)).scalar_one())


def as_dict(r: Any) -> dict[str, Any]:
    """A conflict as the operator reads it (API, CLI, dashboard); the envelope stays out."""
    env = json.loads(r["envelope"]) if r["envelope"] else None
    return {
        "id": r["id"], "kind": r["kind"], "title": KINDS.get(r["kind"], r["kind"]),
        "status": r["status"], "held": bool(r["held"]), "patient_id": r["patient_id"],
        "other_patient_id": r["other_patient_id"], "message_id": r["message_id"],
        "other_message_id": r["other_message_id"], "last_message_id": r["last_message_id"],
        "occurrences": r["occurrences"], "evidence": json.loads(r["evidence"] or "{}"),
        "held_events": [e.get("type") for e in (env or {}).get("events") or []],
        "created_at": r["created_at"].isoformat() if r["created_at"] else None,
        "resolved_at": r["resolved_at"].isoformat() if r["resolved_at"] else None,
        "resolved_by": r["resolved_by"], "resolution": r["resolution"],
    }


def listing(conn: Connection, status: str | None = "open", limit: int = 200
            ) -> list[dict[str, Any]]:
    q = select(timeline_conflicts).order_by(timeline_conflicts.c.id.desc()).limit(limit)
    if status:
        q = q.where(timeline_conflicts.c.status == status)
    return [as_dict(r) for r in conn.execute(q).mappings()]


def count_open(conn: Connection) -> int:
    from sqlalchemy import func

    return int(conn.execute(select(func.count()).select_from(timeline_conflicts).where(
        timeline_conflicts.c.status == "open")).scalar_one())
