"""Appointment from the timeline's SIU messages (S12 book, S13 reschedule, S14 modify,
S15 cancel, S17 delete, S26 no-show): status booked, cancelled or noshow; a deleted
appointment answers 410. Participants: the patient, the professional (AIP) and the
location (AIL), each accepted."""

from __future__ import annotations

import json
from typing import Any

from engine.fhir.context import Context
from engine.fhir.events import row_for_read, with_event
from engine.fhir.model import finish, instant
from engine.fhir.registry import Provider, Registry, SearchParam, SearchResult
from engine.fhir.search import SearchQuery, int_id, narrowed, paged, token
from engine.timeline.models import appointments, timeline_events

PROFILE = "http://hl7.org/fhir/StructureDefinition/Appointment"
STATUSES = {"booked": "booked", "cancelled": "cancelled", "no_show": "noshow"}

PARAMS = (
    SearchParam("_id", "token", "logical id"),
    SearchParam("patient", "reference", "the patient (Patient/id)"),
    SearchParam("date", "date", "start of the appointment"),
    SearchParam("status", "token", "booked | cancelled | noshow"),
    SearchParam("_lastUpdated", "date", "when the appointment last changed"),
)


def _select() -> Any:
    return with_event(appointments)


def _person(p: Any) -> str | None:
    if isinstance(p, dict):
        return " ".join(x for x in (p.get("given"), p.get("family")) if x) or p.get("id")
    return str(p) if p else None


def resource(ctx: Context, a: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(a.get("event_data") or "{}")
    participants: list[dict[str, Any]] = [
        {"actor": ctx.patient_ref(int(a["patient_id"])), "status": "accepted"}]
    who = _person(data.get("professional"))
    if who:
        participants.append({"actor": {"display": who}, "status": "accepted"})
    if data.get("location"):
        participants.append({"actor": {"display": str(data["location"])},
                             "status": "accepted"})
    out: dict[str, Any] = {"resourceType": "Appointment", "id": str(a["id"]),
                           "status": STATUSES.get(a["status"], "booked"),
                           "participant": participants}
    if a["start"] is not None:
        out["start"] = instant(a["start"])
    if a["end"] is not None:
        out["end"] = instant(a["end"])
    if data.get("service"):
        out["serviceType"] = [{"text": str(data["service"])}]
    if data.get("reason"):
        out["reasonCode"] = [{"text": str(data["reason"])}]
    return finish(out, a.get("updated_at"), (PROFILE,))


def read(ctx: Context, resource_id: str) -> dict[str, Any]:
    aid = int_id(resource_id)
    stmt = _select().where(appointments.c.id == (aid if aid is not None else -1))
    row = ctx.conn.execute(stmt).mappings().first()
    row = row_for_read(ctx, stmt, f"Appointment/{resource_id}",
                       gone=row is not None and row["status"] == "deleted")
    return resource(ctx, row)


def search(ctx: Context, query: SearchQuery) -> SearchResult:
    ac = appointments.c
    stmt = narrowed(ctx, query, _select().where(ac.status != "deleted"), ac.patient_id, ac.id,
                    {"date": ac.start, "_lastUpdated": timeline_events.c.updated_at})
    if stmt is None:
        return SearchResult(0, [])
    for c in query.get("status"):
        wanted = {token(v)[1] for v in c.values}
        stmt = stmt.where(ac.status.in_([k for k, v in STATUSES.items() if v in wanted]))
    total, rows = paged(ctx, query, stmt, ac.id)
    return SearchResult(total, [resource(ctx, r) for r in rows])


def register(registry: Registry) -> None:
    registry.register(Provider(
        "Appointment", "timeline.appointment", read=read, search=search, params=PARAMS,
        profiles=(PROFILE,), documentation="Appointments (SIU)"))
