"""Every resource type, read and search over HTTP, each validated with the fhirclient R4
model of its type; the mappings' content checked against what the messages said."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from .conftest import Fhir, full_record


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    model = FHIRElementFactory.instantiate(resource["resourceType"], resource)  # strict
    assert type(model).__name__ == resource["resourceType"]
    assert model.as_json() | {"meta": resource["meta"]} == resource
    return resource


async def _all(c: Any, path: str, **params: Any) -> list[dict[str, Any]]:
    r = await c.get(path, params=params)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return [valid(e["resource"]) for e in bundle.get("entry", [])]


TYPES = ["Patient", "Encounter", "Observation", "DiagnosticReport", "DocumentReference",
         "ServiceRequest", "Appointment", "CareTeam"]


@pytest.mark.parametrize("kind", TYPES)
async def test_search_then_read_every_type(fhir: Fhir, kind: str) -> None:
    full_record(fhir)
    async with fhir.client() as c:
        found = await _all(c, kind, **({"_id": "1"} if kind == "Patient" else
                                        {"patient": "Patient/1"}))
        assert found, kind
        for res in found:
            r = await c.get(f"{kind}/{res['id']}")
            assert r.status_code == 200, r.text
            assert valid(r.json()) == res
            assert r.headers["etag"] == f'W/"{res["meta"]["versionId"]}"'
            assert r.headers["last-modified"].endswith("GMT")
            again = await c.get(f"{kind}/{res['id']}", headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
            if kind != "Patient":
                ref = res.get("subject") or next(
                    p["actor"] for p in res["participant"] if "reference" in p["actor"])
                assert ref == {"reference": "Patient/1"}


async def test_observation_mapping(fhir: Fhir) -> None:
    full_record(fhir)
    async with fhir.client() as c:
        obs = await _all(c, "Observation", patient="1", code="http://loinc.org|14749-6")
    (glucose,) = obs
    codings = glucose["code"]["coding"]
    assert codings[0] == {"system": "http://loinc.org", "code": "14749-6",
                          "display": "Glucose [Moles/volume] in Serum or Plasma"}
    assert codings[1] == {"system": "urn:x-parcours:code-system:L", "code": "GLY"}
    assert glucose["valueQuantity"] == {"value": 5.83, "unit": "mmol/L",
                                        "system": "http://unitsofmeasure.org",
                                        "code": "mmol/L"}
    rng = glucose["referenceRange"][0]
    assert rng["low"]["value"] == 3.89 and rng["high"]["value"] == 6.11
    assert rng["low"]["system"] == "http://unitsofmeasure.org"
    assert glucose["interpretation"][0]["coding"][0]["code"] == "N"
    assert glucose["performer"] == [{"display": "LABO-BIO-PARIS15"}]
    assert glucose["status"] == "final"
    assert glucose["note"] == [{"text": "as received: 1,05 g/L"}]
    async with fhir.client() as c:
        # the laboratory's own code finds the same result
        assert [o["id"] for o in await _all(c, "Observation", patient="1", code="GLY")] \
            == [glucose["id"]]
        assert await _all(c, "Observation", patient="1",
                          code="urn:x-parcours:code-system:L|GLY") != []
        assert await _all(c, "Observation", patient="1", code="http://snomed.info/sct|GLY") \
            == []
        assert await _all(c, "Observation", patient="1", category="laboratory") != []
        assert await _all(c, "Observation", patient="1", category="vital-signs") == []


async def test_observation_sort_and_dates(fhir: Fhir) -> None:
    full_record(fhir)
    # a second result a day later for the same analyte
    from .conftest import ORU_PARIS15, consent_pid, repo_file, with_pid

    later = repo_file(*ORU_PARIS15).replace(b"20250114080000", b"20250115080000") \
        .replace(b"LABO-B-12", b"LABO-B-13").replace(b"ORD-1|RES-1", b"ORD-2|RES-2")
    fhir.apply(with_pid(later, consent_pid()), 7)
    async with fhir.client() as c:
        newest = await _all(c, "Observation", patient="1", code="14749-6", _sort="-date")
        oldest = await _all(c, "Observation", patient="1", code="14749-6", _sort="date")
        assert len(newest) == 2 and newest == oldest[::-1]
        assert newest[0]["effectiveDateTime"] > newest[1]["effectiveDateTime"]
        only = await _all(c, "Observation", patient="1", code="14749-6",
                          date="ge2025-01-15")
        assert [o["id"] for o in only] == [newest[0]["id"]]
        day = await _all(c, "Observation", patient="1", code="14749-6", date="2025-01-14")
        assert [o["id"] for o in day] == [newest[1]["id"]]
        assert await _all(c, "Observation", patient="1", date="lt2025-01-14") == []


async def test_report_with_included_results(fhir: Fhir) -> None:
    full_record(fhir)
    async with fhir.client() as c:
        r = await c.get("DiagnosticReport", params={
            "patient": "1", "code": "BIOCHIMIE", "_include": "DiagnosticReport:result"})
        assert r.status_code == 200, r.text
        bundle = r.json()
    assert bundle["total"] == 1
    matches = [e for e in bundle["entry"] if e["search"]["mode"] == "match"]
    included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    (report,) = [valid(e["resource"]) for e in matches]
    assert report["code"]["coding"][0]["code"] == "BIOCHIMIE"
    assert len(report["result"]) == 12 and len(included) == 12
    assert {f"Observation/{o['id']}" for o in included} == {x["reference"]
                                                            for x in report["result"]}
    assert all(valid(o)["resourceType"] == "Observation" for o in included)
    assert {i["value"] for i in report["identifier"]} == {"ORD-1", "RES-1"}


async def test_document_and_binary(fhir: Fhir) -> None:
    full_record(fhir)
    async with fhir.client() as c:
        (doc,) = await _all(c, "DocumentReference", patient="1")
        assert doc["status"] == "current" and doc["type"]["coding"][0]["system"] == \
            "http://loinc.org"
        assert await _all(c, "DocumentReference", patient="1",
                          type=doc["type"]["coding"][0]["code"]) == [doc]
        assert await _all(c, "DocumentReference", patient="1", status="superseded") == []
        url = doc["content"][0]["attachment"]["url"]
        r = await c.get(url)
        assert r.status_code == 200
        binary = valid(r.json())
    content = base64.b64decode(binary["data"])
    assert content.startswith(b"<ClinicalDocument") or b"<ClinicalDocument" in content[:200]
    assert binary["securityContext"] == {"reference": f"DocumentReference/{doc['id']}"}
    from sqlalchemy import select

    from engine.timeline.models import documents

    with fhir.db.connect() as conn:  # the bytes as stored (and as /api/v1 serves them)
        assert bytes(conn.execute(select(documents.c.content)).scalar_one()) == content


async def test_orders_redundant_flag(fhir: Fhir) -> None:
    full_record(fhir)
    async with fhir.client() as c:
        first, second = await _all(c, "ServiceRequest", patient="1")
        assert first["status"] == "active" and first["intent"] == "order"
        assert "extension" not in first
        assert second["extension"] == [{
            "url": "urn:x-parcours:fhir:StructureDefinition:possibly-redundant",
            "valueReference": {"reference": f"ServiceRequest/{first['id']}"}}]
        assert "Possibly redundant" in second["note"][0]["text"]
        assert second["code"]["coding"][0] == {"system": "http://loinc.org",
                                               "code": "24725-4"}
        assert await _all(c, "ServiceRequest", patient="1", code="24725-4") == [first, second]
        assert await _all(c, "ServiceRequest", patient="1", status="revoked") == []


async def test_encounter_appointment_care_team(fhir: Fhir) -> None:
    full_record(fhir)
    async with fhir.client() as c:
        (enc,) = await _all(c, "Encounter", patient="1")
        assert enc["status"] == "in-progress" and enc["class"]["code"] == "IMP"
        assert enc["period"]["start"].startswith("20")
        assert await _all(c, "Encounter", patient="1", status="finished") == []
        assert await _all(c, "Encounter", patient="1", **{"class": "IMP"}) == [enc]
        (appt,) = await _all(c, "Appointment", patient="1")
        assert appt["status"] == "booked" and appt["start"] == "2020-10-01T09:11:00+00:00"  # SCH-11
        (team,) = await _all(c, "CareTeam", patient="1")
        members = {p["member"].get("identifier", {}).get("value") for p in team["participant"]}
        assert "801234567897" in members
