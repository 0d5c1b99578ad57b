"""The plug-in point (registry.py) as another package uses it: a writable provider added
to a running engine's registry gets create, update, patch and transaction Bundles, all or
nothing on one database transaction; several providers of a type share its search and
split its ids; an alternative `_source` answers only when asked; the CapabilityStatement
follows. The provider stores its rows in a real table of the store."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, func, insert, select, update

from engine.fhir import Provider, SearchParam, SearchResult
from engine.fhir.context import Context
from engine.fhir.model import finish
from engine.fhir.outcome import FhirError
from engine.fhir.search import SearchQuery, int_id

from .conftest import Fhir

notes = Table("fhir_test_tasks", MetaData(), Column("id", Integer, primary_key=True),
              Column("body", Text, nullable=False), Column("status", String(16)))
PREFIX = "t-"


def _resource(ctx: Context, row: Any) -> dict[str, Any]:
    body = json.loads(row.body)
    body.update(id=f"{PREFIX}{row.id}", status=row.status)
    return finish(body, None)


def _get(ctx: Context, resource_id: str) -> Any:
    row = ctx.conn.execute(select(notes).where(
        notes.c.id == (int_id(resource_id, PREFIX) or -1))).first()
    if row is None:
        raise FhirError(404, f"Task/{resource_id} not found")
    return row


def read(ctx: Context, resource_id: str) -> dict[str, Any]:
    return _resource(ctx, _get(ctx, resource_id))


def search(ctx: Context, query: SearchQuery) -> SearchResult:
    stmt = select(notes)
    for c in query.get("status"):
        stmt = stmt.where(notes.c.status.in_(c.values))
    rows = ctx.conn.execute(stmt.order_by(notes.c.id)).all()
    page = rows[query.offset:query.offset + query.count]
    return SearchResult(len(rows), [_resource(ctx, r) for r in page])


def create(ctx: Context, resource: dict[str, Any]) -> dict[str, Any]:
    if resource.get("status") == "explode":
        raise FhirError(422, "status explode is not a Task status")
    rid = ctx.conn.execute(insert(notes).values(
        body=json.dumps(resource), status=resource.get("status")).returning(notes.c.id)
    ).scalar_one()
    return read(ctx, f"{PREFIX}{rid}")


def update_(ctx: Context, resource_id: str, resource: dict[str, Any], if_match: str | None
            ) -> tuple[dict[str, Any], bool]:
    current = read(ctx, resource_id)
    if if_match is not None and if_match != f'W/"{current["meta"]["versionId"]}"':
        raise FhirError(412, "version mismatch")
    ctx.conn.execute(update(notes).where(notes.c.id == int_id(resource_id, PREFIX)).values(
        body=json.dumps(resource), status=resource.get("status")))
    return read(ctx, resource_id), False


def patch(ctx: Context, resource_id: str, body: Any, content_type: str,
          if_match: str | None) -> dict[str, Any]:
    _get(ctx, resource_id)
    if content_type != "application/json-patch+json" or not isinstance(body, list):
        raise FhirError(415, "JSON Patch only")
    status = next(op["value"] for op in body if op.get("path") == "/status")
    ctx.conn.execute(update(notes).where(notes.c.id == int_id(resource_id, PREFIX))
                     .values(status=status))
    return read(ctx, resource_id)


def _install(fhir: Fhir) -> None:
    notes.create(fhir.db)
    registry = fhir.eng.engine.fhir_registry
    registry.register(Provider(
        "Task", "test.task", read=read, search=search, create=create, update=update_,
        patch=patch, id_prefix=PREFIX, params=(SearchParam("status", "token"),)))


def _count(fhir: Fhir) -> int:
    with fhir.db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(notes)).scalar_one())


async def test_writes_and_transactions(fhir: Fhir) -> None:
    _install(fhir)
    task = {"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": "Patient/1"}}
    async with fhir.client() as c:
        cs = (await c.get("metadata")).json()
        (entry,) = [r for r in cs["rest"][0]["resource"] if r["type"] == "Task"]
        assert {i["code"] for i in entry["interaction"]} == {
            "read", "search-type", "create", "update", "patch"}
        assert cs["rest"][0]["interaction"] == [{"code": "transaction"}]

        r = await c.post("Task", json=task)
        assert r.status_code == 201, r.text
        created = r.json()
        assert r.headers["location"].endswith(f"/fhir/r4/Task/{created['id']}")
        assert created["id"].startswith(PREFIX)
        r = await c.put(f"Task/{created['id']}", json=created | {"status": "accepted"},
                        headers={"If-Match": 'W/"stale"'})
        assert r.status_code == 412 and r.json()["resourceType"] == "OperationOutcome"
        r = await c.put(f"Task/{created['id']}", json=created | {"status": "accepted"},
                        headers={"If-Match": f'W/"{created["meta"]["versionId"]}"'})
        assert r.status_code == 200 and r.json()["status"] == "accepted"
        assert r.headers["etag"] != f'W/"{created["meta"]["versionId"]}"'
        r = await c.patch(f"Task/{created['id']}",
                          content=json.dumps([{"op": "replace", "path": "/status",
                                               "value": "in-progress"}]),
                          headers={"Content-Type": "application/json-patch+json"})
        assert r.status_code == 200 and r.json()["status"] == "in-progress"
        r = await c.put(f"Task/{created['id']}", json=created | {"id": "t-999"})
        assert r.status_code == 400  # the body's id must be the URL's

        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:a", "resource": task,
             "request": {"method": "POST", "url": "Task"}},
            {"fullUrl": "urn:uuid:b",
             "resource": task | {"partOf": [{"reference": "urn:uuid:a"}]},
             "request": {"method": "POST", "url": "Task"}},
            {"request": {"method": "GET", "url": f"Task/{created['id']}"}}]}
        r = await c.post("", json=bundle)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["type"] == "transaction-response"
        statuses = [e["response"]["status"] for e in out["entry"]]
        assert statuses == ["201 Created", "201 Created", "200 OK"]
        first_id = out["entry"][0]["resource"]["id"]
        assert out["entry"][1]["resource"]["partOf"] == [{"reference": f"Task/{first_id}"}]
        assert _count(fhir) == 3

        # one failing entry: nothing of the Bundle is kept
        bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": task, "request": {"method": "POST", "url": "Task"}},
            {"resource": task | {"status": "explode"},
             "request": {"method": "POST", "url": "Task"}}]}
        r = await c.post("", json=bad)
        assert r.status_code == 422 and "entry 1" in r.json()["issue"][0]["diagnostics"]
        assert _count(fhir) == 3
        dangling = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": task | {"partOf": [{"reference": "urn:uuid:nobody"}]},
             "request": {"method": "POST", "url": "Task"}}]}
        assert (await c.post("", json=dangling)).status_code == 400
        assert _count(fhir) == 3

        r = await c.get("Task", params={"status": "requested"})
        assert r.json()["total"] == 2
    async with httpx.AsyncClient(base_url=fhir.base + "/fhir/r4") as c:
        assert (await c.post("Task", json=task)).status_code == 401
    async with fhir.client("ops") as c:
        assert (await c.post("Task", json=task)).status_code == 403
    assert _count(fhir) == 3


async def test_second_provider_and_alternative_source(fhir: Fhir) -> None:
    registry = fhir.eng.engine.fhir_registry

    def referral(ctx: Context, rid: str) -> dict[str, Any]:
        if rid != "ref-1":
            raise FhirError(404, "not found")
        return finish({"resourceType": "ServiceRequest", "id": rid, "status": "active",
                       "intent": "order", "subject": ctx.patient_ref(1)}, None)

    def referrals(ctx: Context, query: SearchQuery) -> SearchResult:
        return SearchResult(1, [referral(ctx, "ref-1")] if query.count and not query.offset
                            else [])

    registry.register(Provider("ServiceRequest", "test.referral", read=referral,
                               search=referrals, id_prefix="ref-",
                               params=(SearchParam("patient", "reference"),)))

    def dmp(ctx: Context, query: SearchQuery) -> SearchResult:
        return SearchResult(0, [])

    registry.register(Provider("DocumentReference", "test.dmp", search=dmp, source="dmp",
                               id_prefix="dmp-", params=(SearchParam("patient", "reference"),)))
    from .conftest import full_record

    full_record(fhir)
    async with fhir.client() as c:
        r = await c.get("ServiceRequest", params={"patient": "1", "_count": "2"})
        body = r.json()
        assert body["total"] == 3  # two orders + one referral, paged across providers
        assert [e["resource"]["id"] for e in body["entry"]] == ["1", "2"]
        nxt = next(lk["url"] for lk in body["link"] if lk["relation"] == "next")
        r = await c.get(nxt)
        assert [e["resource"]["id"] for e in r.json()["entry"]] == ["ref-1"]
        assert (await c.get("ServiceRequest/ref-1")).status_code == 200
        # a parameter only the orders know: the referral provider cannot match it
        r = await c.get("ServiceRequest", params={"patient": "1", "status": "active"})
        assert r.json()["total"] == 2
        r = await c.get("DocumentReference", params={"patient": "1", "_source": "dmp"})
        assert r.status_code == 200 and r.json()["total"] == 0
        r = await c.get("DocumentReference", params={"patient": "1"})
        assert r.json()["total"] == 1  # the timeline's own document, not the DMP's
        cs = (await c.get("metadata")).json()
    (doc,) = [x for x in cs["rest"][0]["resource"] if x["type"] == "DocumentReference"]
    assert {"name": "_source", "type": "uri", "documentation": "alternative source: dmp"} \
        in doc["searchParam"]


async def test_model_check_of_reads_and_search_pages(fhir: Fhir,
                                                      monkeypatch: Any) -> None:
    """A mapping that builds an invalid R4 resource (an Observation without its required
    `status`) is refused on a read (500 OperationOutcome, nothing of it sent); search pages
    are checked only with PARCOURS_FHIR_CHECK=all."""
    def broken(ctx: Context, rid: str) -> dict[str, Any]:
        return finish({"resourceType": "Observation", "id": rid,
                       "code": {"text": "no status"}, "subject": ctx.patient_ref(1)}, None)

    def pages(ctx: Context, query: SearchQuery) -> SearchResult:
        return SearchResult(1, [broken(ctx, "bad-1")])

    fhir.eng.engine.fhir_registry.register(Provider(
        "Observation", "test.broken", read=broken, search=pages, id_prefix="bad-",
        params=(SearchParam("patient", "reference"), SearchParam("code", "token"),
                SearchParam("category", "token"), SearchParam("date", "date"),
                SearchParam("_id", "token"), SearchParam("_lastUpdated", "date"))))
    async with fhir.client() as c:
        r = await c.get("Observation/bad-1")
        assert r.status_code == 500
        assert r.json()["issue"][0]["code"] == "exception" and "no status" not in r.text
        r = await c.get("Observation", params={"patient": "1"})
        assert r.status_code == 200  # default: pages unchecked
        monkeypatch.setenv("PARCOURS_FHIR_CHECK", "all")
        r = await c.get("Observation", params={"patient": "1"})
        assert r.status_code == 500 and r.json()["resourceType"] == "OperationOutcome"
