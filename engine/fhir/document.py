"""DocumentReference and Binary: the CDA documents of the timeline.

Masking and confidentiality exactly as /api/v1 (`masking.visible`): a MASQUE_PS document is
seen by its author only, a V (very restricted) one by its author and explicitly granted
clinicians; for anyone else it does not exist (404, left out of searches and totals).
`status`: current, or superseded once a newer version replaced it (`relatesTo` replaces);
a deleted document answers 410. The content is `Binary/<id>`: the stored bytes, as received.

Other sources of DocumentReference (the DMP, ITI-18/ITI-43) are other providers with
`source="dmp"` (registry.py): `DocumentReference?patient=…&_source=dmp` goes to them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from sqlalchemy import select

from engine.fhir.context import Context
from engine.fhir.events import row_for_read
from engine.fhir.model import finish, instant
from engine.fhir.registry import Provider, Registry, SearchParam, SearchResult
from engine.fhir.search import SearchQuery, date_order, int_id, narrowed, paged, token
from engine.timeline.models import documents, timeline_events

PROFILE = "http://hl7.org/fhir/StructureDefinition/DocumentReference"
LOINC = "http://loinc.org"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
STATUSES = {"active": "current", "replaced": "superseded"}

PARAMS = (
    SearchParam("_id", "token", "logical id"),
    SearchParam("patient", "reference", "the patient (Patient/id)"),
    SearchParam("type", "token", "document type (LOINC, CDA ClinicalDocument/code)"),
    SearchParam("date", "date", "the document's effective time"),
    SearchParam("status", "token", "current | superseded"),
    SearchParam("_lastUpdated", "date", "when the reference last changed"),
)


def _select() -> Any:
    return select(documents, timeline_events.c.updated_at,
                  timeline_events.c.data.label("event_data")).outerjoin(
        timeline_events, timeline_events.c.id == documents.c.event_id)


def resource(ctx: Context, d: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(d.get("event_data") or "{}")
    out: dict[str, Any] = {
        "resourceType": "DocumentReference", "id": str(d["id"]),
        "masterIdentifier": {"value": d["document_id"]},
        "status": STATUSES.get(d["status"], "current"), "docStatus": "final",
        "subject": ctx.patient_ref(int(d["patient_id"])),
        "content": [{"attachment": {
            "contentType": d["content_type"] or "application/xml",
            "url": f"Binary/{d['id']}",
            **({"title": d["title"]} if d["title"] else {}),
            **({"creation": instant(d["effective_time"])} if d["effective_time"] else {})},
            "format": {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/"
                                 "formatcode", "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"}}],
    }
    if d["type_code"]:
        out["type"] = {"coding": [{"system": LOINC, "code": d["type_code"]}]}
    if d["effective_time"] is not None:
        out["date"] = instant(d["effective_time"])
    if d["title"]:
        out["description"] = d["title"]
    author = data.get("author") or {}
    if author.get("id") or author.get("family"):
        name = " ".join(x for x in (author.get("given"), author.get("family")) if x)
        out["author"] = [{**({"identifier": {"value": author["id"]}} if author.get("id")
                             else {}), **({"display": name} if name else {})}]
    custodian = data.get("custodian")
    if isinstance(custodian, dict) and (custodian.get("name") or custodian.get("id")):
        out["custodian"] = {"display": custodian.get("name") or custodian.get("id")}
    elif isinstance(custodian, str) and custodian:
        out["custodian"] = {"display": custodian}
    if d["confidentiality"]:
        out["securityLabel"] = [{"coding": [{"system": CONFIDENTIALITY,
                                             "code": d["confidentiality"]}]}]
    if d["parent_id"]:
        parent = ctx.conn.execute(select(documents.c.id).where(
            documents.c.document_id == d["parent_id"], documents.c.source == d["source"],
            documents.c.patient_id == d["patient_id"])).scalar()
        if parent is not None:
            out["relatesTo"] = [{"code": "replaces",
                                 "target": {"reference": f"DocumentReference/{parent}"}}]
    return finish(out, d.get("updated_at"), (PROFILE,))


def _row(ctx: Context, resource_id: str, name: str) -> dict[str, Any]:
    did = int_id(resource_id)
    stmt = _select().where(documents.c.id == (did if did is not None else -1))
    row = ctx.conn.execute(stmt).mappings().first()
    return row_for_read(ctx, stmt, name, gone=row is not None and row["status"] == "deleted")


def read(ctx: Context, resource_id: str) -> dict[str, Any]:
    return resource(ctx, _row(ctx, resource_id, f"DocumentReference/{resource_id}"))


def read_binary(ctx: Context, resource_id: str) -> dict[str, Any]:
    d = _row(ctx, resource_id, f"Binary/{resource_id}")
    if d["content"] is None:
        from engine.fhir.outcome import FhirError

        raise FhirError(404, f"Binary/{resource_id} not found")
    ctx.shown.add(int(d["patient_id"]))
    return finish({"resourceType": "Binary", "id": str(d["id"]),
                   "contentType": d["content_type"] or "application/xml",
                   "securityContext": {"reference": f"DocumentReference/{d['id']}"},
                   "data": base64.b64encode(bytes(d["content"])).decode("ascii")},
                  d.get("updated_at"))


def search(ctx: Context, query: SearchQuery) -> SearchResult:
    dc = documents.c
    stmt = narrowed(ctx, query, _select().where(
        dc.status.in_(tuple(STATUSES)),
        ctx.masking_clause(dc.masked_ps, dc.confidentiality, dc.author_id, dc.patient_id)),
        dc.patient_id, dc.id,
        {"date": dc.effective_time, "_lastUpdated": timeline_events.c.updated_at})
    if stmt is None:
        return SearchResult(0, [])
    for c in query.get("type"):
        codes = [code for system, code in map(token, c.values)
                 if code and system in (None, LOINC)]
        stmt = stmt.where(dc.type_code.in_(codes))
    for c in query.get("status"):
        wanted = [k for k, v in STATUSES.items() if v in {token(x)[1] for x in c.values}]
        stmt = stmt.where(dc.status.in_(wanted))
    total, rows = paged(ctx, query, stmt, *date_order(query, dc.effective_time, dc.id))
    return SearchResult(total, [resource(ctx, r) for r in rows
                                if ctx.visible(r, int(r["patient_id"]))])


def register(registry: Registry) -> None:
    registry.register(Provider(
        "DocumentReference", "timeline.document", read=read, search=search, params=PARAMS,
        sorts=("date", "-date"), profiles=(PROFILE,),
        documentation="CDA documents on the timeline; masking and confidentiality enforced"))
    registry.register(Provider(
        "Binary", "timeline.document-content", read=read_binary,
        documentation="A document's content, byte for byte as received"))
