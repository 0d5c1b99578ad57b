"""Referrals through FHIR: a transaction Bundle, ServiceRequest and Task, the same model as
REF over MLLP (same resource, same timeline), status changes checked by the workflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from engine.referrals.models import referral_history, referrals
from engine.timeline.auth import add_user
from engine.timeline.models import timeline_events

from .support import DAC, GP_RPPS, INS, ROUTES, ref, settle

CATEGORY = [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005",
                         "display": "Patient referral"}]}]


def bundle(ref_id: str, *, performer: str = DAC, status: str = "active",
           category: Any = CATEGORY) -> dict[str, Any]:
    def entry(uuid: str, resource: dict[str, Any]) -> dict[str, Any]:
        return {"fullUrl": f"urn:uuid:{uuid}", "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]}}

    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        entry("pat", {"resourceType": "Patient", "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": INS}],
            "name": [{"family": "MARTIN", "given": ["Paul"]}], "gender": "male",
            "birthDate": "1945-03-21"}),
        entry("gp", {"resourceType": "Practitioner", "identifier": [
            {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": GP_RPPS}],
            "name": [{"family": "DUPONT", "given": ["Jeanne"]}]}),
        entry("cab", {"resourceType": "Organization", "name": "Cabinet Dupont"}),
        entry("role", {"resourceType": "PractitionerRole",
                       "practitioner": {"reference": "urn:uuid:gp"},
                       "organization": {"reference": "urn:uuid:cab"}}),
        entry("dac", {"resourceType": "Organization", "name": "DAC Paris Centre",
                      "identifier": [{"system": "http://finess.sante.gouv.fr",
                                      "value": performer}]}),
        entry("sr", {
            "resourceType": "ServiceRequest", "status": status, "intent": "order",
            "identifier": [{"system": "urn:oid:1.2.250.1.999.1", "value": ref_id}],
            "category": category, "priority": "routine", "code": {"text": "Medical"},
            "subject": {"reference": "urn:uuid:pat"},
            "requester": {"reference": "urn:uuid:role"},
            "performer": [{"reference": "urn:uuid:dac"}],
            "authoredOn": "2026-12-01T09:10:00+00:00",
            "occurrencePeriod": {"end": "2026-12-31T23:00:00+00:00"},
            "reasonCode": [{"text": "provider ordered"},
                           {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                        "code": "Z60.2", "display": "Personne vivant seule"}]}],
            "note": [{"text": "Isolement, chutes répétées"}]}),
    ]}


async def _engine(make_engine: Any, store_url: str, tmp_path: Path) -> Any:
    eng = await make_engine(ROUTES, store_url=store_url, route=True, http=True,
                            home=tmp_path / "home")
    svc = eng.engine.referrals
    svc.add_structure(DAC, "DAC Paris Centre")
    db = eng.store.engine
    eng.tokens = {name: add_user(db, name, role, rpps)[1] for name, role, rpps in (
        ("gp", "clinician", GP_RPPS), ("coord", "clinician", "10000000011"),
        ("outsider", "clinician", "10000000099"), ("root", "admin", None))}
    svc.add_member(DAC, "coord")
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    eng.base = f"http://127.0.0.1:{port}/fhir/r4"
    return eng


def client(eng: Any, who: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=eng.base, headers={
        "Authorization": f"Bearer {eng.tokens[who]}"}, timeout=30)


def _comparable(sr: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sr.items() if k not in ("id", "identifier", "meta")}


def _titles(eng: Any, rid: int) -> list[str]:
    with eng.store.engine.connect() as conn:
        hist = conn.execute(select(referral_history.c.id).where(
            referral_history.c.referral_id == rid)).scalars().all()
        key = conn.execute(select(referrals.c.key).where(referrals.c.id == rid)).scalar()
        return [t for (t,) in conn.execute(select(timeline_events.c.title).where(
            timeline_events.c.key.in_([f"{key}#{h}" for h in hist])).order_by(
            timeline_events.c.id))]


async def test_fhir_and_hl7_give_one_model(make_engine: Any, store_url: str,
                                           tmp_path: Path) -> None:
    eng = await _engine(make_engine, store_url, tmp_path)
    async with client(eng, "gp") as gp, client(eng, "root") as root:
        r = await gp.post("", json=bundle("DEM-9"))
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["type"] == "transaction-response"
        sr = out["entry"][-1]["resource"]  # the ServiceRequest, after what it references
        assert (sr["id"], sr["status"], out["entry"][-1]["response"]["status"]) == (
            "dac-1", "active", "201 Created")
        assert await eng.send(ref("I12", "F-1")) and True
        await settle(eng, 1)
        fhir_sr = (await root.get("/ServiceRequest/dac-1")).json()
        hl7_sr = (await root.get("/ServiceRequest/dac-2")).json()
        assert hl7_sr["identifier"] == [{"system": "urn:oid:1.2.250.1.999.1",
                                         "value": "DEM-1"}]
        assert _comparable(fhir_sr) == _comparable(hl7_sr)
        assert fhir_sr["subject"] == hl7_sr["subject"]  # one patient, by the INS
        assert hl7_sr["requester"] == {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1",
                                                      "value": GP_RPPS},
                                       "display": "Jeanne DUPONT (Cabinet Dupont)"}
        assert _titles(eng, 1) == _titles(eng, 2) == ["Support request sent (Jeanne DUPONT)"]

        # modification: a FHIR PUT of the whole request, an I13 for the other
        changed = {**fhir_sr, "priority": "stat"}
        r = await gp.put("/ServiceRequest/dac-1", json=changed)
        assert r.status_code == 200 and r.json()["priority"] == "stat", r.text
        await eng.send(ref("I13", "F-1b", priority="S"))
        await settle(eng, 2)
        assert _comparable((await root.get("/ServiceRequest/dac-1")).json()) == _comparable(
            (await root.get("/ServiceRequest/dac-2")).json())

        # cancellation: a FHIR PATCH revoking it, an I14 for the other
        r = await gp.patch("/ServiceRequest/dac-1", json=[
            {"op": "replace", "path": "/status", "value": "revoked"}],
            headers={"Content-Type": "application/json-patch+json"})
        assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
        await eng.send(ref("I14", "F-2"))
        await settle(eng, 3)
        fhir_sr = (await root.get("/ServiceRequest/dac-1")).json()
        hl7_sr = (await root.get("/ServiceRequest/dac-2")).json()
        assert _comparable(fhir_sr) == _comparable(hl7_sr)
        assert [t.split(" (")[0] for t in _titles(eng, 1)] == [
            t.split(" (")[0] for t in _titles(eng, 2)] == [
            "Support request sent", "Support request modified", "Support request cancelled"]
        # the same Bundle again is the same request
        again = await gp.post("", json=bundle("DEM-9"))
        assert again.status_code == 200 and again.json()["entry"][-1]["resource"]["id"] == "dac-1"
        with eng.store.engine.connect() as conn:
            assert conn.execute(select(referrals.c.id)).scalars().all() == [1, 2]


async def test_task_workflow_and_searches(make_engine: Any, store_url: str,
                                          tmp_path: Path) -> None:
    eng = await _engine(make_engine, store_url, tmp_path)
    async with client(eng, "gp") as gp, client(eng, "coord") as coord, \
            client(eng, "outsider") as outsider:
        assert (await gp.post("", json=bundle("DEM-10"))).status_code == 200
        tasks = (await coord.get("/Task", params={"owner": DAC})).json()
        assert tasks["total"] == 1
        t = tasks["entry"][0]["resource"]
        assert (t["id"], t["status"], t["focus"]) == (
            "dac-1", "requested", {"reference": "ServiceRequest/dac-1"})
        pid = t["for"]["reference"].split("/")[1]
        assert (await coord.get(f"/Patient/{pid}")).status_code == 404  # not in the circle
        r = await coord.patch("/Task/dac-1", json={"resourceType": "Parameters", "parameter": [
            {"name": "operation", "part": [
                {"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Task.status"},
                {"name": "value", "valueCode": "accepted"}]}]},
            headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
        assert (await coord.get(f"/Patient/{pid}")).status_code == 200  # the DAC joined
        refused = await coord.put("/Task/dac-1", json={**r.json(), "status": "draft"})
        assert refused.status_code == 422
        assert refused.json()["issue"][0]["diagnostics"] == (
            "a request accepted cannot become draft; allowed from accepted: cancelled, "
            "completed, in-progress, on-hold")
        done = await coord.put("/Task/dac-1", json={**r.json(), "status": "completed"})
        assert done.status_code == 200 and done.json()["status"] == "completed"
        sr = (await gp.get("/ServiceRequest/dac-1")).json()
        assert sr["status"] == "completed"
        stale = await gp.patch("/ServiceRequest/dac-1", json=[
            {"op": "replace", "path": "/status", "value": "on-hold"}],
            headers={"Content-Type": "application/json-patch+json",
                     "If-Match": 'W/"0000"'})
        assert stale.status_code == 412

        for params in ({"patient.identifier": f"urn:oid:1.2.250.1.213.1.4.8|{INS}"},
                       {"status": "completed"}, {"requester": GP_RPPS}, {"performer": DAC},
                       {"identifier": "urn:oid:1.2.250.1.999.1|DEM-10"},
                       {"authored": "2026-12-01"}, {"category": "3457005"},
                       {"patient": f"Patient/{pid}"}):
            found = (await gp.get("/ServiceRequest", params=params)).json()
            assert found["total"] == 1, (params, found)
        assert (await gp.get("/ServiceRequest", params={"status": "active"})).json()[
            "total"] == 0
        nothing = (await outsider.get("/ServiceRequest", params={"category": "3457005"})).json()
        assert nothing["total"] == 0
        assert (await outsider.get("/ServiceRequest/dac-1")).status_code == 404
        assert (await outsider.get("/Task/dac-1")).status_code == 404


async def test_bundle_refused_as_a_whole(make_engine: Any, store_url: str,
                                         tmp_path: Path) -> None:
    eng = await _engine(make_engine, store_url, tmp_path)
    async with client(eng, "gp") as gp:
        r = await gp.post("", json=bundle("DEM-11", performer="130000009"))
        assert r.status_code == 422
        assert "performer 130000009 is not a support structure known here" in \
            r.json()["issue"][0]["diagnostics"]
        r = await gp.post("", json=bundle("DEM-12", category=[{"text": "lab"}]))
        assert r.status_code == 422 and "3457005" in r.json()["issue"][0]["diagnostics"]
        r = await gp.post("", json=bundle("DEM-13", status="completed"))
        assert r.status_code == 422
        broken = bundle("DEM-14")
        broken["entry"][1]["resource"]["name"] = "DUPONT"  # HumanName is a list of objects
        r = await gp.post("", json=broken)
        assert r.status_code == 422 and r.json()["issue"][0]["code"] == "structure", r.text
        broken = bundle("DEM-15")
        broken["entry"][-1]["resource"]["subject"] = "Patient/1"  # a Reference, not a string
        r = await gp.post("", json=broken)
        assert r.status_code == 422 and r.json()["issue"][0]["code"] == "structure", r.text
    from engine.timeline.models import patients

    with eng.store.engine.connect() as conn:  # the Patient entries were rolled back too
        assert conn.execute(select(referrals.c.id)).all() == []
        assert conn.execute(select(patients.c.id)).all() == []
