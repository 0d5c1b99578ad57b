"""CareTeam (read-only): a patient's care circle, the people who may read their timeline.

One CareTeam a patient, with the patient's id. Its participants are the care circle rows
that give access now, decided by the timeline's own rule (`care_circle.may_read` asked for
each member): doctors named by ADT (PV1-7/8/9/17, ROL) within the circle's window and
explicit grants (`parcours care-circle grant`). The member is identified by the
professional id (RPPS/ADELI) or the user name of a grant.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from engine.fhir.context import Context
from engine.fhir.model import finish, instant
from engine.fhir.outcome import FhirError
from engine.fhir.registry import Provider, Registry, SearchParam, SearchResult
from engine.fhir.search import SearchQuery, int_id, patient_criteria
from engine.timeline.auth import Principal
from engine.timeline.care_circle import may_read
from engine.timeline.models import care_circle, patients, users

PROFILE = "http://hl7.org/fhir/StructureDefinition/CareTeam"

PARAMS = (
    SearchParam("_id", "token", "logical id (the patient's id)"),
    SearchParam("patient", "reference", "the patient (Patient/id)"),
)


def resource(ctx: Context, patient: dict[str, Any]) -> dict[str, Any]:
    pid = int(patient["id"])
    rows = ctx.conn.execute(select(care_circle, users.c.username).outerjoin(
        users, users.c.id == care_circle.c.user_id).where(
        care_circle.c.patient_id == pid, care_circle.c.revoked_at.is_(None))
        .order_by(care_circle.c.id)).mappings().all()
    participants, seen = [], set()
    for r in rows:
        member = Principal(r["user_id"], r["username"] or "", "clinician",
                           r["professional_id"], "care-team")
        key = (r["professional_id"], r["user_id"])
        if key in seen or not may_read(ctx.conn, member, pid,
                                       ctx.timeline.settings.care_circle_days):
            continue
        seen.add(key)
        ref: dict[str, Any] = {}
        if r["professional_id"]:
            ref["identifier"] = {"value": r["professional_id"]}
        if r["username"]:
            ref["display"] = r["username"]
        part: dict[str, Any] = {"member": ref or {"display": "unknown"},
                                "role": [{"text": r["role"] or r["source"]}],
                                "period": {"start": instant(r["first_at"])}}
        if r["until"] is not None:
            part["period"]["end"] = instant(r["until"])
        participants.append(part)
    out: dict[str, Any] = {"resourceType": "CareTeam", "id": str(pid), "status": "active",
                           "name": "Care circle", "subject": ctx.patient_ref(pid)}
    if participants:
        out["participant"] = participants
    return finish(out, patient["updated_at"], (PROFILE,))


def _patient(ctx: Context, pid: int) -> dict[str, Any] | None:
    row = ctx.conn.execute(select(patients).where(patients.c.id == pid,
                                                  patients.c.merged_into.is_(None))
                           ).mappings().first()
    return dict(row) if row else None


def read(ctx: Context, resource_id: str) -> dict[str, Any]:
    pid = int_id(resource_id)
    row = _patient(ctx, pid) if pid is not None else None
    if row is None:
        raise FhirError(404, f"CareTeam/{resource_id} not found")
    ctx.readable(pid, f"CareTeam/{resource_id}")
    return resource(ctx, row)


def search(ctx: Context, query: SearchQuery) -> SearchResult:
    pids = patient_criteria(ctx, query)
    if pids is None:  # admin without `patient`: every patient's team
        pids = list(ctx.conn.execute(select(patients.c.id).where(
            patients.c.merged_into.is_(None)).order_by(patients.c.id)).scalars())
    for c in query.get("_id"):
        wanted = {i for i in map(int_id, c.values) if i is not None}
        pids = [p for p in pids if p in wanted]
    page = pids[query.offset:query.offset + query.count]
    out = [resource(ctx, r) for r in (_patient(ctx, p) for p in page) if r]
    return SearchResult(len(pids), out)


def register(registry: Registry) -> None:
    registry.register(Provider(
        "CareTeam", "timeline.care-circle", read=read, search=search, params=PARAMS,
        profiles=(PROFILE,), documentation="The care circle of a patient (read-only)"))
