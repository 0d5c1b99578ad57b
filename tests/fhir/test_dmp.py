"""DMP consultation through FHIR, end to end: an HTTP client → /fhir/r4 → the engine →
ITI-18 / ITI-43 over mutual TLS → dmp-sim, on SQLite and PostgreSQL.

What a user sees is checked: the Bundle and resources (validated with the fhirclient R4
models), the OperationOutcome of each refusal with its HTTP status, the VIHF the DMP
received (the reader's identity, the access mode) and the audit rows.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from fhirclient.models.binary import Binary
from fhirclient.models.bundle import Bundle
from fhirclient.models.documentreference import DocumentReference
from fhirclient.models.operationoutcome import OperationOutcome
from sqlalchemy import update

from connectors.dmp.metadata import cx_ins
from engine.timeline.models import patients
from tests.dmp.conftest import Certs, RunningSim, certs, dmp_options, dmp_server, sim
from tests.fhir.conftest import CONSENT, INS, Fhir, start
from tests.timeline.conftest import read

__all__ = ["certs", "dmp_server", "sim"]  # fixtures of the DMP tests, used here
PATIENT_CX = cx_ins(INS, "1.2.250.1.213.1.4.10")
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
PURPOSE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
SUBJECT = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"


def routes(sim_url: str, certs: Certs, consultation: dict[str, Any] | None) -> str:
    options = dmp_options(sim_url, certs)
    if consultation is not None:
        options["consultation"] = consultation
    return (f"version: 1\nchannels:\n  main: {{type: mllp, host: 127.0.0.1, port: 0}}\n"
            f"destinations:\n  dmp: {{type: dmp, options: {json.dumps(options)}}}\n"
            "routes: []\n")


@pytest.fixture
async def fhir_dmp(make_engine: Any, store_url: str, dmp_server: RunningSim, certs: Certs,
                   sim: Any) -> Fhir:
    sim.state.seed(PATIENT_CX)
    return await start(make_engine, store_url, routes(dmp_server.url, certs, {
        "timeout": 1.0, "break_glass_roles": ["clinician"]}))


async def patient_id(f: Fhir) -> str:
    async with f.client("root") as c:
        r = await c.get("Patient", params={"identifier": f"urn:oid:1.2.250.1.213.1.4.10|{INS}"})
        return str(r.json()["entry"][0]["resource"]["id"])


def outcome(r: Any, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    OperationOutcome(body, strict=True)
    return str(body["issue"][0]["diagnostics"])


def audit_rows(f: Fhir, prefix: str = "fhir.dmp") -> list[tuple[str, str, dict[str, Any]]]:
    return [(a["action"], a["outcome"], json.loads(a["detail"])) for a in f.audit()
            if a["action"].startswith(prefix)]


async def test_search_read_and_open_a_dmp_document(fhir_dmp: Fhir, sim: Any) -> None:
    f = fhir_dmp
    pid = await patient_id(f)
    async with f.client("inside") as c:
        r = await c.get("DocumentReference", params={"patient": f"Patient/{pid}",
                                                      "_source": "dmp", "_sort": "-date"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+json")
        bundle = r.json()
        Bundle(bundle, strict=True)
        assert bundle["total"] == 3  # the replaced first version of the lab report is not
        docs = [e["resource"] for e in bundle["entry"]]
        for d in docs:
            DocumentReference(d, strict=True)
        assert [d["content"][0]["attachment"]["title"] for d in docs] == [
            "Bilan biologique", "Scanner thoracique", "Lettre de liaison à la sortie"]
        lab = docs[0]
        assert lab["status"] == "current" and lab["subject"] == {"reference": f"Patient/{pid}"}
        assert lab["type"]["coding"][0] == {"system": "http://loinc.org", "code": "11502-2",
                                            "display": "CR d'examens biologiques"}
        assert lab["category"][0]["coding"][0]["code"] == "10"
        assert lab["date"] == "2026-11-15T09:00:00Z"
        assert lab["content"][0]["attachment"]["creation"] == "2026-11-15T09:00:00Z"
        assert lab["content"][0]["format"]["code"] == "urn:ihe:lab:xd-lab:2008"
        assert lab["securityLabel"][0]["coding"][0]["code"] == "N"
        assert docs[2]["securityLabel"][0]["coding"][0]["code"] == "R"
        uid = f"1.2.250.1.213.1.1.9.99.{INS}.3"
        assert lab["masterIdentifier"] == {"system": "urn:ietf:rfc:3986",
                                           "value": f"urn:oid:{uid}"}
        assert {"use": "secondary", "system": "urn:oid:1.2.250.1.213.1.1.9.1",
                "value": uid} in lab["identifier"]  # repository + document: what ITI-43 needs
        assert lab["author"][0] == {"type": "Practitioner", "display": "Dr Claire MARTIN",
                                    "identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1",
                                                   "value": "810001234567"}}
        assert lab["author"][1]["display"] == "Hôpital Saint-Louis"
        assert lab["context"]["practiceSetting"]["coding"][0]["code"] == "ETABLISSEMENT"
        assert lab["context"]["facilityType"]["coding"][0]["code"] == "SA01"
        assert lab["context"]["period"]["start"] == "2026-11-15T09:00:00Z"
        assert "data" not in lab["content"][0]["attachment"]  # a search lists, it does not fetch
        assert sim.state.received == ["urn:ihe:iti:2007:RegistryStoredQuery"]
        # The VIHF was the reader's, in normal mode.
        vihf = sim.state.vihf[-1]
        assert vihf[ROLE] == ["10"] and vihf[SUBJECT] == ["inside"]
        assert vihf[PURPOSE] == ["normal"]

        # Reading one fetches it (ITI-18 to find the entry, then ITI-43).
        r = await c.get(f"DocumentReference/{lab['id']}")
        assert r.status_code == 200, r.text
        full = r.json()
        DocumentReference(full, strict=True)
        content = base64.b64decode(full["content"][0]["attachment"]["data"])
        assert b"Glyc\xc3\xa9mie \xc3\xa0 jeun 5,3 mmol/L." in content
        digest = base64.b64encode(hashlib.sha1(content).digest()).decode()
        assert full["content"][0]["attachment"]["hash"] == digest
        assert sim.state.received[-1] == ITI43
        # Binary (the attachment url) is the document as well.
        url = lab["content"][0]["attachment"]["url"]
        assert url.endswith(f"/fhir/r4/Binary/{lab['id']}")
        r = await c.get(f"Binary/{lab['id']}")
        assert r.status_code == 200, r.text
        Binary(r.json(), strict=True)
        assert r.json()["contentType"] == "text/xml"
        assert base64.b64decode(r.json()["data"]) == content
        # An id that is not one of the patient's documents: 404, the DMP says nothing more.
        other = lab["id"][:-4] + "0000"
        outcome(await c.get(f"DocumentReference/{other}"), 404)
        outcome(await c.get("DocumentReference/dmp-not-an-id"), 404)
    rows = audit_rows(f)
    assert ("fhir.dmp.search", "allowed", {"mode": "normal", "transaction": "ITI-18"}) in rows
    assert ("fhir.dmp.retrieve", "allowed", {"mode": "normal", "transaction": "ITI-43"}) in rows
    assert all(a["patient_id"] == int(pid) for a in f.audit()
               if a["action"].startswith("fhir.dmp"))
    assert any(a["action"] == "fhir.search" and a["outcome"] == "allowed" for a in f.audit())


async def test_search_parameters_become_find_documents_filters(fhir_dmp: Fhir,
                                                                sim: Any) -> None:
    f = fhir_dmp
    pid = await patient_id(f)

    async def titles(**params: str) -> list[str]:
        async with f.client("inside") as c:
            r = await c.get("DocumentReference", params={
                "patient": pid, "_source": "dmp", "_sort": "date", **params})
            assert r.status_code == 200, r.text
            return [e["resource"]["content"][0]["attachment"]["title"]
                    for e in r.json().get("entry", [])]

    assert await titles(status="superseded") == ["Bilan biologique (version 1)"]
    assert await titles(status="current,superseded", type="http://loinc.org|11502-2") == [
        "Bilan biologique (version 1)", "Bilan biologique"]
    # The filters went to the DMP in the FindDocuments (ITI-18), not applied here afterwards.
    sent = sim.state.queries[-1]
    assert sent.values("$XDSDocumentEntryStatus") == [
        "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved",
        "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"]
    assert sent.values("$XDSDocumentEntryTypeCode") == ["11502-2^^2.16.840.1.113883.6.1"]
    assert sent.first("$XDSDocumentEntryPatientId") == PATIENT_CX
    assert await titles(type="18748-4") == ["Scanner thoracique"]  # LOINC when no system
    assert await titles(creation="ge2026-11-15") == ["Bilan biologique"]
    assert sim.state.queries[-1].first("$XDSDocumentEntryCreationTimeFrom") == "20261115000000"
    assert sim.state.queries[-1].values("$XDSDocumentEntryCreationTimeTo") == []
    assert await titles(date="lt2026-07") == ["Lettre de liaison à la sortie"]
    assert await titles(**{"security-label": "R"}) == ["Lettre de liaison à la sortie"]
    assert await titles(creation="2025") == []
    async with f.client("inside") as c:
        r = await c.get("DocumentReference", params={"patient": pid, "_source": "dmp",
                                                      "_count": "1"})
        assert r.json()["total"] == 3 and len(r.json()["entry"]) == 1
        assert any(link["relation"] == "next" for link in r.json()["link"])


@pytest.mark.parametrize("params, says", [
    ({"_source": "dmp"}, "one patient"),
    ({"_source": "dmp", "patient": "{pid}", "color": "blue"}, "unknown search parameter"),
    ({"_source": "dmp", "patient": "{pid}", "status": "lost"}, "status=lost"),
    ({"_source": "dmp", "patient": "{pid}", "creation": "2026-13-01"}, "creation"),
    ({"_source": "dmp", "patient": "{pid}", "creation": "ne2026"}, "prefix ne"),
    ({"_source": "dmp", "patient": "{pid}", "format": "xd-lab"}, "system|code"),
    ({"_source": "dmp", "patient": "{pid}", "access-mode": "urgence"}, "access-mode"),
    ({"_source": "dmp", "patient": "{pid}", "access-mode": "bris_de_glace"}, "access-reason"),
    ({"_source": "elsewhere", "patient": "{pid}"}, "_source=elsewhere"),
])
async def test_bad_searches_are_400(fhir_dmp: Fhir, sim: Any, params: dict[str, str],
                                    says: str) -> None:
    pid = await patient_id(fhir_dmp)
    async with fhir_dmp.client("inside") as c:
        r = await c.get("DocumentReference",
                        params={k: v.format(pid=pid) for k, v in params.items()})
    assert says in outcome(r, 400)
    assert sim.state.received == []  # refused before the DMP was asked


async def test_who_may_consult(fhir_dmp: Fhir, sim: Any) -> None:
    f = fhir_dmp
    pid = await patient_id(f)
    params = {"patient": pid, "_source": "dmp"}
    async with f.client(None) as c:
        outcome(await c.get("DocumentReference", params=params), 401)
    async with f.client("ops") as c:
        outcome(await c.get("DocumentReference", params=params), 403)
    async with f.client("root") as c:  # an admin reads every patient, but is no professional
        assert "professional identity" in outcome(
            await c.get("DocumentReference", params=params), 403)
    async with f.client("outside") as c:  # not in the care circle: as if there were nothing
        outcome(await c.get("DocumentReference", params=params), 404)
    assert sim.state.received == []
    assert any(a["action"] == "fhir.search" and a["outcome"] == "denied"
               and a["patient_id"] == int(pid) for a in f.audit())
    # A patient who refused DMP consultation (ZFA INC) is not consulted in normal mode.
    with f.db.begin() as conn:
        conn.execute(update(patients).where(patients.c.id == int(pid)).values(
            dmp_consultation_consent=False))
    async with f.client("inside") as c:
        assert "refused DMP consultation" in outcome(
            await c.get("DocumentReference", params=params), 403)
    # A patient whose identity is not qualified has no usable INS (RNIV).
    with f.db.begin() as conn:
        conn.execute(update(patients).where(patients.c.id == int(pid)).values(
            dmp_consultation_consent=True, identity_status="PROV"))
    async with f.client("inside") as c:
        assert "not qualified" in outcome(await c.get("DocumentReference", params=params), 422)
    assert sim.state.received == []


async def test_break_glass(fhir_dmp: Fhir, sim: Any) -> None:
    """The outsider opens the DMP in bris de glace: allowed for their role, said in the VIHF,
    audited as such, and their later reads of this patient's DMP documents go through."""
    f = fhir_dmp
    pid = await patient_id(f)
    with f.db.begin() as conn:  # even against a refused consent: that is what it is for
        conn.execute(update(patients).where(patients.c.id == int(pid)).values(
            dmp_consultation_consent=False))
    async with f.client("outside") as c:
        r = await c.get("DocumentReference", params={
            "patient": pid, "_source": "dmp", "access-mode": "bris_de_glace",
            "access-reason": "patient inconscient aux urgences"})
        assert r.status_code == 200, r.text
        assert r.json()["total"] == 3
        assert sim.state.vihf[-1][PURPOSE] == ["bris_de_glace"]
        doc_id = r.json()["entry"][0]["resource"]["id"]
        r = await c.get(f"Binary/{doc_id}")
        assert r.status_code == 200, r.text
        assert sim.state.vihf[-1][PURPOSE] == ["bris_de_glace"]
    rows = audit_rows(f)
    assert rows[0] == ("fhir.dmp.break_glass", "break_glass",
                       {"reason": "patient inconscient aux urgences"})
    assert ("fhir.dmp.search", "break_glass", {"mode": "bris_de_glace",
                                               "transaction": "ITI-18"}) in rows
    assert ("fhir.dmp.retrieve", "break_glass", {"mode": "bris_de_glace",
                                                 "transaction": "ITI-43"}) in rows
    # Another outsider who did not break the glass still sees nothing.
    from engine.timeline import auth

    other = auth.add_user(f.db, "other", "clinician", "877777777777")[1]
    f.tokens["other"] = other
    async with f.client("other") as c:
        outcome(await c.get(f"Binary/{doc_id}"), 404)
    # The patient then opposes bris de glace (ZFA-6 = Y): it closes, even to its opener.
    raw = read(*CONSENT).replace(b"ZFA|ACTIF|20240306111154|||||||INO",
                                 b"ZFA|ACTIF|20240306111154||||Y|||INO")
    assert raw != read(*CONSENT)
    f.apply(raw, 2)
    async with f.client("outside") as c:
        assert "opposed bris de glace" in outcome(await c.get(f"Binary/{doc_id}"), 403)
        assert "opposed bris de glace" in outcome(await c.get("DocumentReference", params={
            "patient": pid, "_source": "dmp", "access-mode": "bris_de_glace",
            "access-reason": "encore"}), 403)
    assert audit_rows(f)[-1][:2] == ("fhir.dmp.break_glass", "denied")


async def test_break_glass_only_for_allowed_roles(make_engine: Any, store_url: str,
                                                  dmp_server: RunningSim, certs: Certs,
                                                  sim: Any) -> None:
    sim.state.seed(PATIENT_CX)
    f = await start(make_engine, store_url, routes(dmp_server.url, certs, {
        "break_glass_roles": []}))
    pid = await patient_id(f)
    async with f.client("inside") as c:
        r = await c.get("DocumentReference", params={
            "patient": pid, "_source": "dmp", "access-mode": "bris_de_glace",
            "access-reason": "urgence"})
    assert "may not use bris de glace" in outcome(r, 403)
    assert sim.state.received == []
    assert audit_rows(f)[0][:2] == ("fhir.dmp.break_glass", "denied")


@pytest.mark.parametrize("setup, status, says", [
    (lambda st: st.closed.add(INS), 422, "DMPClosed"),
    (lambda st: st.unknown.add(INS), 404, "XDSUnknownPatientId"),
    (lambda st: setattr(st, "refuse", "XDSRegistryError"), 422, "XDSRegistryError"),
    (lambda st: st.fail_next.append("busy"), 503, "XDSRegistryBusy"),
])
async def test_dmp_refusals_are_operation_outcomes(fhir_dmp: Fhir, sim: Any, setup: Any,
                                                   status: int, says: str) -> None:
    pid = await patient_id(fhir_dmp)
    setup(sim.state)
    async with fhir_dmp.client("inside") as c:
        r = await c.get("DocumentReference", params={"patient": pid, "_source": "dmp"})
    assert says in outcome(r, status)
    assert INS not in r.text  # the DMP's context may name the patient: never repeated
    action, result, detail = audit_rows(fhir_dmp)[-1]
    assert (action, result, detail["dmp_codes"]) == ("fhir.dmp.search", "denied", [says])


@pytest.mark.parametrize("failure, code, says", [
    ("http503", "transient", "could not be reached (ITI-18: HTTP503)"),
    ("garbage", "exception", "answer to ITI-18 was not understood"),
])
async def test_a_broken_dmp_is_a_502(fhir_dmp: Fhir, sim: Any, failure: str, code: str,
                                     says: str) -> None:
    pid = await patient_id(fhir_dmp)
    sim.state.fail_next.append(failure)
    async with fhir_dmp.client("inside") as c:
        r = await c.get("DocumentReference", params={"patient": pid, "_source": "dmp"})
    assert says in outcome(r, 502)
    assert r.json()["issue"][0]["code"] == code
    assert audit_rows(fhir_dmp)[-1][:2] == ("fhir.dmp.search", "error")


async def test_a_dmp_that_does_not_answer_is_a_504(fhir_dmp: Fhir, sim: Any) -> None:
    pid = await patient_id(fhir_dmp)
    sim.state.stall_seconds = 3.0  # the consultation's timeout is 1 s
    try:
        async with fhir_dmp.client("inside") as c:
            r = await c.get("DocumentReference", params={"patient": pid, "_source": "dmp"},
                            timeout=10)
    finally:
        sim.state.stall_seconds = 0.0
    assert "did not answer within 1 s" in outcome(r, 504)
    assert r.json()["issue"][0]["code"] == "timeout"
    assert audit_rows(fhir_dmp)[-1][1:] == ("error", {"error": "ReadTimeout", "mode": "normal",
                                                       "transaction": "ITI-18"})


async def test_not_configured_and_capability(make_engine: Any, store_url: str,
                                             dmp_server: RunningSim, certs: Certs) -> None:
    f = await start(make_engine, store_url, routes(dmp_server.url, certs, None))
    pid = await patient_id(f)
    async with f.client("inside") as c:
        r = await c.get("DocumentReference", params={"patient": pid, "_source": "dmp"})
        assert "not configured" in outcome(r, 501)
        cap = (await c.get("metadata")).json()
    doc = next(r for r in cap["rest"][0]["resource"] if r["type"] == "DocumentReference")
    names = {p["name"] for p in doc["searchParam"]}
    assert {"_source", "patient", "access-mode", "access-reason", "creation"} <= names
    assert "dmp" in next(p for p in doc["searchParam"] if p["name"] == "_source")[
        "documentation"]


def _fhirclient_lists_and_opens(base: str, token: str) -> tuple[list[Any], Any, Any]:
    """What an EHR does with the Python `fhirclient`: find the patient by INS, list their
    DMP documents, open one through its attachment URL."""
    from fhirclient import client
    from fhirclient.models.patient import Patient

    smart = client.FHIRClient(settings={"app_id": "parcours-tests", "api_base": base})
    smart.server.session.headers["Authorization"] = f"Bearer {token}"
    server = smart.server
    (patient,) = Patient.where(struct={
        "identifier": f"urn:oid:1.2.250.1.213.1.4.10|{INS}"}).perform_resources_iter(server)
    docs = list(DocumentReference.where(struct={
        "patient": patient.id, "_source": "dmp", "_count": "2"}).perform_resources_iter(server))
    url = docs[0].content[0].attachment.url
    binary = Binary.read_from(url[len(base):], server)
    return docs, binary, patient


async def test_a_fhir_client_lists_and_opens_dmp_documents(fhir_dmp: Fhir) -> None:
    import asyncio

    docs, binary, patient = await asyncio.to_thread(
        _fhirclient_lists_and_opens, fhir_dmp.base + "/fhir/r4/", fhir_dmp.tokens["inside"])
    assert len(docs) == 3  # two pages, followed by the client through `next`
    assert {d.subject.reference for d in docs} == {f"Patient/{patient.id}"}
    assert all(d.status == "current" for d in docs)
    opened = docs[0]
    assert binary.contentType == "text/xml"
    content = base64.b64decode(binary.data)
    assert base64.b64encode(hashlib.sha1(content).digest()).decode() == (
        opened.content[0].attachment.hash)


async def test_bris_de_glace_closes_after_its_window(make_engine: Any, store_url: str,
                                                     dmp_server: RunningSim, certs: Certs,
                                                     sim: Any) -> None:
    """With `break_glass_hours: 0` the glass opens for the search that breaks it only: the
    reader's next read, outside their care circle, is a 404 again."""
    sim.state.seed(PATIENT_CX)
    f = await start(make_engine, store_url, routes(dmp_server.url, certs, {
        "break_glass_hours": 0}))
    pid = await patient_id(f)
    async with f.client("outside") as c:
        r = await c.get("DocumentReference", params={
            "patient": pid, "_source": "dmp", "access-mode": "bris_de_glace",
            "access-reason": "urgence vitale"})
        assert r.status_code == 200 and r.json()["total"] == 3
        doc_id = r.json()["entry"][0]["resource"]["id"]
        outcome(await c.get(f"Binary/{doc_id}"), 404)
    assert sim.state.received.count(ITI43) == 0
