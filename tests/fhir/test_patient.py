"""Patient over real HTTP: FR Core INS slices, search parameters, merged patients."""

from __future__ import annotations

from typing import Any

from fhirclient.models.patient import Patient

from .conftest import INS, Fhir


def _official(p: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in p.get("identifier", []) if i.get("use") == "official"]


async def test_find_by_ins_and_read(fhir: Fhir) -> None:
    async with fhir.client() as c:
        r = await c.get("Patient", params={"identifier": f"urn:oid:1.2.250.1.213.1.4.10|{INS}"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+json")
        bundle = r.json()
        assert bundle["type"] == "searchset" and bundle["total"] == 1
        (entry,) = bundle["entry"]
        patient = entry["resource"]
        Patient(patient, strict=True)
        assert entry["fullUrl"].endswith(f"/fhir/r4/Patient/{patient['id']}")
        r = await c.get(f"Patient/{patient['id']}")
        assert r.status_code == 200
        assert r.headers["etag"] == f'W/"{patient["meta"]["versionId"]}"'
        assert r.json() == patient
        r304 = await c.get(f"Patient/{patient['id']}", headers={"If-None-Match": r.headers["etag"]})
        assert r304.status_code == 304
    print(patient)
