"""DiagnosticReport: a lab result event (one OBR and its OBX) of the timeline.

`result` references the report's Observations (`_include=DiagnosticReport:result` returns
them in the same Bundle, search mode `include`); `code` is the OBR-4 service, `status`
from OBR-25 (HL7 table 0123), identifiers the placer and filler order numbers (OBR-2/3).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import or_, select

from engine.fhir import observation
from engine.fhir.context import Context
from engine.fhir.events import event_id, row_for_read
from engine.fhir.model import finish, instant
from engine.fhir.registry import Provider, Registry, SearchParam, SearchResult
from engine.fhir.search import SearchQuery, date_order, narrowed, paged, token
from engine.timeline.models import observations, timeline_events

PROFILE = "http://hl7.org/fhir/StructureDefinition/DiagnosticReport"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
# HL7 v2.5.1 table 0123 (OBR-25) → FHIR diagnostic-report-status
STATUSES = {"F": "final", "C": "corrected", "P": "preliminary", "R": "partial",
            "I": "registered", "O": "registered", "S": "partial", "A": "partial",
            "X": "cancelled", "Y": "registered", "Z": "registered"}
INCLUDE = "DiagnosticReport:result"

PARAMS = (
    SearchParam("_id", "token", "logical id"),
    SearchParam("patient", "reference", "the patient (Patient/id)"),
    SearchParam("code", "token", "the ordered service (OBR-4)"),
    SearchParam("date", "date", "the report's clinically relevant time"),
    SearchParam("_lastUpdated", "date", "when the report last changed"),
)


def resource(ctx: Context, ev: dict[str, Any], result_ids: list[int]) -> dict[str, Any]:
    data = json.loads(ev["data"] or "{}")
    code = data.get("code") or {}
    coding = {"system": observation.system_uri(code.get("system")), "code": code["code"]} \
        if code.get("code") else None
    if coding and code.get("text"):
        coding["display"] = code["text"]
    out: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": str(ev["id"]),
        "status": STATUSES.get(data.get("status") or "", "final"),
        "category": [{"coding": [{"system": V2_0074, "code": "LAB"}]}],
        "code": {"coding": [coding]} if coding else {"text": ev["title"] or "result"},
        "subject": ctx.patient_ref(int(ev["patient_id"])),
    }
    if code.get("text") and coding:
        out["code"]["text"] = code["text"]
    identifiers = [{"type": {"coding": [{"system": V2_0203, "code": kind}]}, "value": value}
                   for kind, value in (("PLAC", data.get("placer")), ("FILL", data.get("filler")))
                   if value]
    if identifiers:
        out["identifier"] = identifiers
    if ev["at"] is not None:
        out["effectiveDateTime"] = instant(ev["at"])
    if result_ids:
        out["result"] = [{"reference": f"Observation/{i}"} for i in result_ids]
    return finish(out, ev["updated_at"], (PROFILE,))


def _results(ctx: Context, event_ids: list[int]) -> dict[int, list[int]]:
    rows = ctx.conn.execute(select(observations.c.id, observations.c.event_id).where(
        observations.c.event_id.in_(event_ids), observations.c.deleted.is_(False))
        .order_by(observations.c.id)).all() if event_ids else []
    out: dict[int, list[int]] = {}
    for oid, eid in rows:
        out.setdefault(int(eid), []).append(int(oid))
    return out


def read(ctx: Context, resource_id: str) -> dict[str, Any]:
    ev = timeline_events.c
    stmt = select(timeline_events).where(ev.id == event_id(resource_id), ev.type == "result")
    row = ctx.conn.execute(stmt).mappings().first()
    row = row_for_read(ctx, stmt, f"DiagnosticReport/{resource_id}",
                       gone=row is not None and row["status"] != "active")
    return resource(ctx, row, _results(ctx, [int(row["id"])]).get(int(row["id"]), []))


def _code_match(value: str) -> Any:
    """OBR-4's code; a system, when given, must be one this API emits (LOINC or a
    laboratory's `urn:x-parcours:code-system:`), the code is what is compared."""
    system, code = token(value)
    if code is None:
        return None
    if system and system != observation.LOINC and not system.startswith(
            observation.LOCAL_SYSTEM):
        return None
    return timeline_events.c.code == code


def search(ctx: Context, query: SearchQuery) -> SearchResult:
    ev = timeline_events.c
    stmt = narrowed(ctx, query, select(timeline_events).where(
        ev.type == "result", ev.status == "active",
        ctx.masking_clause(ev.masked_ps, ev.confidentiality, ev.author_id, ev.patient_id)),
        ev.patient_id, ev.id, {"date": ev.at, "_lastUpdated": ev.updated_at})
    if stmt is None:
        return SearchResult(0, [])
    for c in query.get("code"):
        matches = [m for m in map(_code_match, c.values) if m is not None]
        if not matches:
            return SearchResult(0, [])
        stmt = stmt.where(or_(*matches))
    total, rows = paged(ctx, query, stmt, *date_order(query, ev.at, ev.id))
    rows = [r for r in rows if ctx.visible(r, int(r["patient_id"]))]
    results = _results(ctx, [int(r["id"]) for r in rows])
    page = [resource(ctx, r, results.get(int(r["id"]), [])) for r in rows]
    included = []
    if INCLUDE in query.include:
        wanted = [i for r in rows for i in results.get(int(r["id"]), [])]
        if wanted:
            for o in ctx.conn.execute(observation._select().where(
                    observations.c.id.in_(wanted)).order_by(observations.c.id)).mappings():
                included.append(observation.resource(ctx, dict(o)))
    return SearchResult(total, page, included)


def register(registry: Registry) -> None:
    registry.register(Provider(
        "DiagnosticReport", "timeline.result", read=read, search=search, params=PARAMS,
        sorts=("date", "-date"), includes=(INCLUDE,), profiles=(PROFILE,),
        documentation="Lab reports (OBR) with their results"))
