"""Search mechanics over HTTP: strict parameters, errors as OperationOutcome, paging by the
`next` links, `_lastUpdated`, the CapabilityStatement and SMART discovery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirclient.models.capabilitystatement import CapabilityStatement

from .conftest import Fhir, full_record, start


def _outcome(r: httpx.Response, status: int, code: str, *words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] == "error" and issue["code"] == code
    for w in words:
        assert w in issue["diagnostics"], (w, issue)


async def test_bad_requests_are_refused(fhir: Fhir) -> None:
    async with fhir.client() as c:
        _outcome(await c.get("Observation", params={"patient": "1", "colour": "red"}),
                 400, "invalid", "colour", "code", "patient")
        _outcome(await c.get("Patient", params={"name": "x"}), 400, "invalid", "'name'")
        _outcome(await c.get("Patient", params={"family:phonetic": "x"}), 400, "invalid",
                 ":phonetic")
        _outcome(await c.get("Observation", params={"code:text": "x"}), 400, "invalid")
        _outcome(await c.get("Observation", params={"_count": "ten"}), 400, "invalid",
                 "_count")
        _outcome(await c.get("Observation", params={"_count": "100000"}), 400, "invalid")
        _outcome(await c.get("Observation", params={"_count": "-1"}), 400, "invalid")
        _outcome(await c.get("Observation", params={"_offset": "x"}), 400, "invalid")
        _outcome(await c.get("Observation", params={"date": "yesterday"}), 400, "invalid",
                 "date")
        _outcome(await c.get("Observation", params={"date": "2025-02-30"}), 400, "invalid")
        _outcome(await c.get("Observation", params={"date": "ap2025"}), 400, "invalid")
        _outcome(await c.get("Observation", params={"_sort": "value"}), 400, "invalid",
                 "_sort")
        _outcome(await c.get("Patient", params={"_sort": "-date"}), 400, "invalid")
        _outcome(await c.get("Observation", params={"_include": "Observation:subject"}),
                 400, "invalid", "_include")
        _outcome(await c.get("Observation", params={"_revinclude": "x"}), 400, "invalid")
        _outcome(await c.get("Observation", params={"patient": ""}), 400, "invalid")
        _outcome(await c.get("Observation", params={"_format": "xml"}), 406, "not-supported")
        _outcome(await c.get("DocumentReference", params={"_source": "elsewhere"}), 400,
                 "invalid", "_source")
        _outcome(await c.get("Medication"), 404, "not-supported", "Medication")
        _outcome(await c.get("Medication/1"), 404, "not-supported")
        _outcome(await c.get("Binary"), 405, "not-supported")
        _outcome(await c.get("Patient/abc"), 404, "not-found")
        _outcome(await c.put("Patient/1", json={"resourceType": "Patient", "id": "1"}),
                 405, "not-supported")
        # Patient create exists for referral Bundles (issue #14): it needs an identifier
        _outcome(await c.post("Patient", json={"resourceType": "Patient"}), 422,
                 "processing", "Patient.identifier")
        _outcome(await c.post("", content=b"{not json"), 400, "structure")
        _outcome(await c.post("", json={"resourceType": "Bundle", "type": "batch"}), 422,
                 "not-supported")
        # lenient handling: the unknown parameter is ignored, and left out of the links
        r = await c.get("Patient", params={"colour": "red"},
                        headers={"Prefer": "handling=lenient"})
        assert r.status_code == 200 and r.json()["total"] == 1
        assert "colour" not in r.json()["link"][0]["url"]


async def test_paging_follows_next_links(fhir: Fhir) -> None:
    full_record(fhir)
    seen: list[str] = []
    async with fhir.client() as c:
        url: str | None = "Observation?patient=1&_count=5&_sort=-date"
        pages = 0
        while url:
            r = await c.get(url)
            assert r.status_code == 200
            bundle = r.json()
            assert bundle["total"] == 12
            seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
            url = next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)
            if url:
                assert url.startswith(fhir.base + "/fhir/r4/Observation?")
            pages += 1
        assert pages == 3 and len(seen) == 12 and len(set(seen)) == 12
        r = await c.get("Observation", params={"patient": "1", "_count": "0"})
        assert r.json()["total"] == 12 and "entry" not in r.json()
        # a page past the end is empty, not an error
        r = await c.get("Observation", params={"patient": "1", "_offset": "50"})
        assert r.status_code == 200 and "entry" not in r.json()
        # POST _search: same answer
        r = await c.post("Observation/_search", data={"patient": "1", "_count": "5"})
        assert r.status_code == 200 and r.json()["total"] == 12
        assert len(r.json()["entry"]) == 5
        # _lastUpdated: everything changed today, nothing in the future
        r = await c.get("Observation", params={"patient": "1", "_lastUpdated": "gt2000-01-01"})
        assert r.json()["total"] == 12
        r = await c.get("Observation", params={"patient": "1", "_lastUpdated": "ge2999-01-01"})
        assert r.json()["total"] == 0
        # ORed values, ANDed parameters
        r = await c.get("Observation", params={"patient": "1", "code": "14749-6,14682-9"})
        assert r.json()["total"] == 2
        r = await c.get("Observation", params=[("patient", "1"), ("code", "14749-6"),
                                               ("code", "14682-9")])
        assert r.json()["total"] == 0


async def test_capability_statement_lists_exactly_the_registry(fhir: Fhir) -> None:
    async with fhir.client(None) as c:
        r = await c.get("metadata")
    assert r.status_code == 200
    cs = r.json()
    CapabilityStatement(cs, strict=True)
    assert cs["fhirVersion"] == "4.0.1" and cs["kind"] == "instance"
    registry = fhir.eng.engine.fhir_registry
    rest = cs["rest"][0]
    assert sorted(x["type"] for x in rest["resource"]) == registry.types()
    for res in rest["resource"]:
        declared = set(registry.params(res["type"]))
        if registry.sources(res["type"]):  # _source=dmp (engine/fhir/dmp.py)
            declared.add("_source")
        assert {p["name"] for p in res.get("searchParam", [])} == declared
        codes = {i["code"] for i in res["interaction"]}
        assert codes == {i for p in registry.providers(res["type"]) for i in p.interactions()}
    by_type = {x["type"]: x for x in rest["resource"]}
    assert by_type["Binary"]["interaction"] == [{"code": "read"}]
    assert by_type["DiagnosticReport"]["searchInclude"] == ["DiagnosticReport:result"]
    assert rest["interaction"] == [{"code": "transaction"}]  # referrals write (issue #14)
    assert "service" not in rest["security"]
    async with fhir.client(None) as c:
        r = await c.get(".well-known/smart-configuration")
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_smart_configuration_with_oidc(make_engine: Any, store_url: str,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": []}))
    monkeypatch.setenv("PARCOURS_OIDC_JWKS", str(jwks))
    monkeypatch.setenv("PARCOURS_OIDC_ISSUER", "https://auth.esante.example/realms/psc")
    f = await start(make_engine, store_url)
    async with f.client(None) as c:
        r = await c.get(".well-known/smart-configuration")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        conf = r.json()
        assert conf["issuer"] == "https://auth.esante.example/realms/psc"
        assert conf["token_endpoint"].startswith(conf["issuer"])
        assert "launch-standalone" in conf["capabilities"]
        cs = (await c.get("metadata")).json()
    assert cs["rest"][0]["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
