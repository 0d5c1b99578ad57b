"""Encounter: a stay (visit) of the timeline, with its movements as location history.

The stay is recomputed from its movements by the timeline (IHE PAM / PAM-FR: A01/A04 start
it, A03 ends it, A21/A22 leave and return, A11/A12/A13 cancel); its status maps to FHIR
encounter-status: planned (A05 only), in-progress, onleave, finished, cancelled. `class`
from PV1-2 (HL7 table 0004) in v3 ActCode; `identifier` the visit number (PV1-19) assigned
by the facility; each active movement is a `location` entry with its period.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from engine.fhir.context import Context
from engine.fhir.events import row_for_read
from engine.fhir.model import finish, instant
from engine.fhir.registry import Provider, Registry, SearchParam, SearchResult
from engine.fhir.search import SearchQuery, int_id, narrowed, paged, token
from engine.timeline.models import movements, stays, timeline_events

PROFILE = "http://hl7.org/fhir/StructureDefinition/Encounter"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
STATUSES = {"planned": "planned", "active": "in-progress", "on_leave": "onleave",
            "discharged": "finished", "cancelled": "cancelled", "unknown_start": "unknown"}
# HL7 table 0004 (PV1-2) → v3 ActCode
CLASSES = {"I": "IMP", "O": "AMB", "E": "EMER", "R": "AMB", "P": "PRENC", "B": "IMP",
           "H": "SS", "C": "AMB", "N": "AMB"}
CLASS_DISPLAY = {"IMP": "inpatient encounter", "AMB": "ambulatory", "EMER": "emergency",
                 "PRENC": "pre-admission", "SS": "short stay"}

PARAMS = (
    SearchParam("_id", "token", "logical id"),
    SearchParam("patient", "reference", "the patient (Patient/id)"),
    SearchParam("date", "date", "admission time"),
    SearchParam("status", "token", "planned | in-progress | onleave | finished | cancelled"),
    SearchParam("class", "token", "IMP | AMB | EMER | PRENC | SS (v3 ActCode)"),
    SearchParam("_lastUpdated", "date", "when the stay last changed"),
)


def _select() -> Any:
    return select(stays, timeline_events.c.updated_at, timeline_events.c.masked_ps,
                  timeline_events.c.confidentiality, timeline_events.c.author_id).outerjoin(
        timeline_events, timeline_events.c.id == stays.c.event_id)


def resource(ctx: Context, s: dict[str, Any]) -> dict[str, Any]:
    klass = CLASSES.get(s["patient_class"] or "", "AMB")
    out: dict[str, Any] = {
        "resourceType": "Encounter", "id": str(s["id"]),
        "status": STATUSES.get(s["status"], "unknown"),
        "class": {"system": ACT_CODE, "code": klass, "display": CLASS_DISPLAY[klass]},
        "subject": ctx.patient_ref(int(s["patient_id"])),
    }
    if s["visit_number"]:
        ident: dict[str, Any] = {"type": {"coding": [{"system": V2_0203, "code": "VN"}]},
                                 "value": s["visit_number"]}
        if s["facility"]:
            ident["assigner"] = {"display": s["facility"]}
        out["identifier"] = [ident]
    if s["admitted_at"] or s["discharged_at"]:
        out["period"] = {k: instant(v) for k, v in (("start", s["admitted_at"]),
                                                    ("end", s["discharged_at"])) if v}
    if s["facility"]:
        out["serviceProvider"] = {"display": s["facility"]}
    moves = ctx.conn.execute(select(movements).where(
        movements.c.stay_id == s["id"], movements.c.status == "active")
        .order_by(movements.c.at, movements.c.id)).mappings().all()
    locations = []
    for i, m in enumerate(moves):
        place = m["location"] or m["medical_ward"] or m["nursing_ward"]
        if not place:
            continue
        nxt = moves[i + 1]["at"] if i + 1 < len(moves) else None
        period = {k: instant(v) for k, v in (("start", m["at"]), ("end", nxt)) if v}
        locations.append({"location": {"display": " / ".join(
            x for x in (m["medical_ward"], m["location"]) if x) or place},
            "status": "completed" if nxt or m["trigger"] == "A03" else "active",
            **({"period": period} if period else {})})
    if locations:
        out["location"] = locations
    return finish(out, s.get("updated_at"), (PROFILE,))


def read(ctx: Context, resource_id: str) -> dict[str, Any]:
    sid = int_id(resource_id)
    stmt = _select().where(stays.c.id == (sid if sid is not None else -1))
    return resource(ctx, row_for_read(ctx, stmt, f"Encounter/{resource_id}"))


def search(ctx: Context, query: SearchQuery) -> SearchResult:
    sc = stays.c
    stmt = narrowed(ctx, query, _select(), sc.patient_id, sc.id,
                    {"date": sc.admitted_at, "_lastUpdated": timeline_events.c.updated_at})
    if stmt is None:
        return SearchResult(0, [])
    for c in query.get("status"):
        wanted = {token(v)[1] for v in c.values}
        stmt = stmt.where(sc.status.in_([k for k, v in STATUSES.items() if v in wanted]))
    for c in query.get("class"):
        wanted = {token(v)[1] for v in c.values}
        codes = [k for k, v in CLASSES.items() if v in wanted]
        cond = sc.patient_class.in_(codes)
        if "AMB" in wanted:
            cond = or_(cond, sc.patient_class.is_(None), sc.patient_class.not_in(CLASSES))
        stmt = stmt.where(cond)
    total, rows = paged(ctx, query, stmt, sc.id)
    return SearchResult(total, [resource(ctx, r) for r in rows])


def register(registry: Registry) -> None:
    registry.register(Provider(
        "Encounter", "timeline.stay", read=read, search=search, params=PARAMS,
        profiles=(PROFILE,), documentation="Stays and their movements (IHE PAM / PAM-FR)"))
