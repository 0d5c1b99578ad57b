"""ServiceRequest for the lab orders of the timeline (ORM^O01 / OML^O21).

`status` active, or revoked once cancelled (ORC-1 CA); `intent` order; `code` the ordered
test (OBR-4); `requester` the prescriber (ORC-12 / OBR-16); `identifier` placer and filler
order numbers. An order the timeline flags as possibly redundant (the same test for the same
patient by another prescriber within the window, design brief flow 4) carries the
extension `possibly-redundant` pointing at the earlier order, and a `note` saying so.

DAC referrals are ServiceRequests too, from another provider with its own id prefix
(registry.py); these ids are the order's number.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import or_

from engine.fhir import observation
from engine.fhir.context import Context
from engine.fhir.events import row_for_read, with_event
from engine.fhir.model import finish, instant
from engine.fhir.registry import Provider, Registry, SearchParam, SearchResult
from engine.fhir.search import SearchQuery, int_id, narrowed, paged, token
from engine.timeline.models import orders, timeline_events

PROFILE = "http://hl7.org/fhir/StructureDefinition/ServiceRequest"
REDUNDANT = "urn:x-parcours:fhir:StructureDefinition:possibly-redundant"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
STATUSES = {"active": "active", "cancelled": "revoked"}
PRIORITIES = {"S": "stat", "A": "asap", "R": "routine", "P": "urgent", "T": "urgent"}

PARAMS = (
    SearchParam("_id", "token", "logical id"),
    SearchParam("patient", "reference", "the patient (Patient/id)"),
    SearchParam("code", "token", "the ordered test"),
    SearchParam("status", "token", "active | revoked"),
    SearchParam("authored", "date", "when ordered"),
    SearchParam("_lastUpdated", "date", "when the order last changed"),
)


def _select() -> Any:
    return with_event(orders)


def resource(ctx: Context, o: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(o.get("event_data") or "{}")
    test = data.get("test") or {}
    coding = {"system": observation.system_uri(test.get("system")), "code": test["code"]} \
        if test.get("code") else None
    code: dict[str, Any] = {"coding": [coding]} if coding else {}
    if test.get("text"):
        code["text"] = test["text"]
    out: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": str(o["id"]),
        "status": STATUSES.get(o["status"], "unknown"), "intent": "order",
        "subject": ctx.patient_ref(int(o["patient_id"])),
    }
    if code:
        out["code"] = code
    identifiers = [{"type": {"coding": [{"system": V2_0203, "code": kind}]}, "value": value}
                   for kind, value in (("PLAC", data.get("placer")), ("FILL", data.get("filler")))
                   if isinstance(value, str) and value]
    if identifiers:
        out["identifier"] = identifiers
    if o["ordered_at"] is not None:
        out["authoredOn"] = instant(o["ordered_at"])
    presc = data.get("prescriber") or {}
    name = " ".join(x for x in (presc.get("given"), presc.get("family")) if x)
    if presc.get("id") or name:
        out["requester"] = {**({"identifier": {"value": presc["id"]}} if presc.get("id")
                               else {}), **({"display": name} if name else {})}
    priority = PRIORITIES.get(str(data.get("priority") or "")[:1].upper())
    if priority:
        out["priority"] = priority
    if o["redundant_of"] is not None:
        earlier = {"reference": f"ServiceRequest/{o['redundant_of']}"}
        out["extension"] = [{"url": REDUNDANT, "valueReference": earlier}]
        out["note"] = [{"text": "Possibly redundant: the same test was ordered for this patient "
                                f"by another prescriber (ServiceRequest/{o['redundant_of']})"}]
    return finish(out, o.get("updated_at"), (PROFILE,))


def read(ctx: Context, resource_id: str) -> dict[str, Any]:
    oid = int_id(resource_id)
    stmt = _select().where(orders.c.id == (oid if oid is not None else -1))
    return resource(ctx, row_for_read(ctx, stmt, f"ServiceRequest/{resource_id}"))


def search(ctx: Context, query: SearchQuery) -> SearchResult:
    oc, ev = orders.c, timeline_events.c
    stmt = narrowed(ctx, query, _select(), oc.patient_id, oc.id,
                    {"authored": oc.ordered_at, "_lastUpdated": ev.updated_at})
    if stmt is None:
        return SearchResult(0, [])
    for c in query.get("code"):
        stmt = stmt.where(or_(*[ev.code == code for _, code in map(token, c.values) if code]
                              or [oc.id.is_(None)]))
    for c in query.get("status"):
        wanted = {token(v)[1] for v in c.values}
        stmt = stmt.where(oc.status.in_([k for k, v in STATUSES.items() if v in wanted]))
    total, rows = paged(ctx, query, stmt, oc.id)
    return SearchResult(total, [resource(ctx, r) for r in rows])


def register(registry: Registry) -> None:
    registry.register(Provider(
        "ServiceRequest", "timeline.order", read=read, search=search, params=PARAMS,
        profiles=(PROFILE,), documentation="Lab orders (ORM/OML), redundant orders flagged"))
