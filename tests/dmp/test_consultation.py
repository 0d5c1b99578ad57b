"""DMP consultation, protocol side: ITI-18 FindDocuments and ITI-43 Retrieve Document Set.

Requests and answers are checked against the ebRS 3.0 / XDS.b schemas of the corpus (not the
copies the product ships), then exchanged with dmp-sim over mutual TLS: found, retrieved,
refused, and a DMP too slow to answer.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree

from connectors.dmp import iti41
from connectors.dmp.client import DMPClient, DMPConfig, DMPUnavailable
from connectors.dmp.entries import read_document_entry
from connectors.dmp.metadata import APPROVED, DEPRECATED, RIM, Code, document_entry_xml
from connectors.dmp.retrieve import (
    DocumentRequest,
    RetrievedDocument,
    read_retrieve_response,
    retrieve_request,
    retrieve_response,
)
from connectors.dmp.saml import PROFESSION_SYSTEM, Role, VIHFIdentity, reader_identity
from connectors.dmp.seed import seed_documents
from connectors.dmp.simulator import REPOSITORY_ID
from connectors.dmp.stored_query import (
    FIND_DOCUMENTS,
    FindDocuments,
    QueryError,
    adhoc_query_response,
    find_documents_request,
    get_documents_request,
    parse_value,
    read_adhoc_query,
    read_query_response,
)

from .conftest import CORPUS, Certs, RunningSim, _free_port, dmp_options

PATIENT = "1234567890123^^^&1.2.250.1.213.1.4.10&ISO^NH"
OTHER = "2345678901234^^^&1.2.250.1.213.1.4.10&ISO^NH"
LOINC = "2.16.840.1.113883.6.1"


@lru_cache(maxsize=1)
def corpus_schema() -> etree.XMLSchema:
    """The corpus copy of XDS.b (it imports rim, rs, lcm, query)."""
    path = CORPUS / "xds/schema/XDS.b_DocumentRepository.xsd"
    return etree.XMLSchema(etree.parse(str(path), etree.XMLParser(no_network=True)))


def assert_valid(el: etree._Element) -> None:
    schema = corpus_schema()
    doc = etree.fromstring(etree.tostring(el))
    assert schema.validate(doc), [f"{e.line}: {e.message}" for e in schema.error_log]


def slots(req: etree._Element) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in req.iter(f"{{{RIM}}}Slot"):
        out.setdefault(s.get("name", ""), []).extend(
            v.text or "" for v in s.iter(f"{{{RIM}}}Value"))
    return out


# ------------------------------------------------------------------- ITI-18 request


def test_find_documents_request_is_valid_and_written_as_iti18_says() -> None:
    q = FindDocuments(
        PATIENT, statuses=(APPROVED, DEPRECATED),
        type_codes=(Code("11502-2", LOINC), Code("18748-4", LOINC)),
        class_codes=(Code("10", "1.2.250.1.213.1.1.4.1"),),
        creation_from="20260101", creation_to="20261231235959",
        author_persons=("810001234567^MARTIN%",))
    req = find_documents_request(q)
    assert_valid(req)
    assert req.find(f"{{{RIM}}}AdhocQuery").get("id") == FIND_DOCUMENTS
    got = slots(req)
    # Single value quoted, lists in parentheses, codes code^^scheme, times unquoted numbers.
    assert got["$XDSDocumentEntryPatientId"] == [f"'{PATIENT}'"]
    assert got["$XDSDocumentEntryStatus"] == [f"('{APPROVED}','{DEPRECATED}')"]
    assert got["$XDSDocumentEntryTypeCode"] == [f"('11502-2^^{LOINC}','18748-4^^{LOINC}')"]
    assert got["$XDSDocumentEntryClassCode"] == ["('10^^1.2.250.1.213.1.1.4.1')"]
    assert got["$XDSDocumentEntryCreationTimeFrom"] == ["20260101"]
    assert got["$XDSDocumentEntryCreationTimeTo"] == ["20261231235959"]
    assert got["$XDSDocumentEntryAuthorPerson"] == ["('810001234567^MARTIN%')"]
    assert "$XDSDocumentEntryPracticeSettingCode" not in got  # not asked, not sent
    option = req.find("{urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0}ResponseOption")
    assert option.get("returnType") == "LeafClass"


def test_quotes_in_values_are_doubled_and_read_back() -> None:
    req = find_documents_request(FindDocuments(PATIENT, author_persons=("^O'Neil^Mary",)))
    assert slots(req)["$XDSDocumentEntryAuthorPerson"] == ["('^O''Neil^Mary')"]
    q = read_adhoc_query(req)
    assert q.values("$XDSDocumentEntryAuthorPerson") == ["^O'Neil^Mary"]
    assert q.first("$XDSDocumentEntryPatientId") == PATIENT
    assert parse_value("('a,b','c')") == ["a,b", "c"]
    assert parse_value("20260101") == ["20260101"]


@pytest.mark.parametrize("query, says", [
    (FindDocuments(""), "patient id"),
    (FindDocuments("1234567890123"), "patient id"),
    (FindDocuments(PATIENT, statuses=()), "status"),
    (FindDocuments(PATIENT, statuses=("Approved",)), "URN"),
    (FindDocuments(PATIENT, creation_from="2026-01-01"), "CreationTimeFrom"),
    (FindDocuments(PATIENT, service_stop_to="20261"), "ServiceStopTimeTo"),
    (FindDocuments(PATIENT, type_codes=(Code("11502-2", ""),)), "coding scheme"),
    (FindDocuments(PATIENT, return_type="Everything"), "returnType"),
])
def test_bad_queries_are_refused_before_sending(query: FindDocuments, says: str) -> None:
    with pytest.raises(QueryError, match=says):
        find_documents_request(query)


def test_get_documents_takes_one_kind_of_id() -> None:
    assert_valid(get_documents_request(["1.2.3"]))
    for bad in ({}, {"unique_ids": ["1"], "entry_uuids": ["urn:uuid:x"]}):
        with pytest.raises(QueryError):
            get_documents_request(**bad)


# ------------------------------------------------------------------ ITI-18 response


def test_query_response_round_trips_every_attribute() -> None:
    seeded = [e for e, _ in seed_documents(PATIENT, REPOSITORY_ID)]
    resp = adhoc_query_response(seeded)
    assert_valid(resp)
    got = read_query_response(resp)
    assert got.result.ok and got.result.errors == []
    assert got.entries == seeded  # the dataclass that was written is the one read back
    lab = got.entries[2]
    assert (lab.type_code.code, lab.type_code.display) == ("11502-2", "CR d'examens biologiques")
    assert lab.class_code == Code("10", "1.2.250.1.213.1.1.4.1", "Compte rendu")
    assert lab.repository_id == REPOSITORY_ID and lab.status == APPROVED
    assert lab.authors[0].person.startswith("810001234567^MARTIN^Claire")
    assert got.entries[3].confidentiality[0].code == "R"


def test_object_ref_answers_and_failures() -> None:
    seeded = [e for e, _ in seed_documents(PATIENT, REPOSITORY_ID)]
    refs = read_query_response(adhoc_query_response(seeded, "ObjectRef"))
    assert refs.entries == [] and refs.references == [e.entry_uuid for e in seeded]
    failed = adhoc_query_response([], errors=[iti41.RegistryError(
        "XDSUnknownPatientId", "patient inconnu")])
    assert_valid(failed)
    r = read_query_response(failed)
    assert not r.result.ok and [e.code for e in r.result.errors] == ["XDSUnknownPatientId"]


def test_entry_read_from_a_sparse_registry_answer() -> None:
    """A registry may omit most attributes: read as empty, nothing invented."""
    eo = etree.fromstring(
        f'<rim:ExtrinsicObject xmlns:rim="{RIM}" id="urn:uuid:1" status="{APPROVED}">'
        '<rim:ExternalIdentifier identificationScheme="urn:uuid:2e82c1f6-a085-4c72-9da3-'
        '8640a32e42ab" value="1.2.3" registryObject="urn:uuid:1" id="e1"/>'
        '</rim:ExtrinsicObject>')
    e = read_document_entry(eo)
    assert (e.unique_id, e.status, e.entry_uuid) == ("1.2.3", APPROVED, "urn:uuid:1")
    assert e.type_code.code == "" and e.authors == [] and e.size == 0 and e.title == ""
    assert_valid(document_entry_xml(e))


def test_response_of_another_kind_is_refused() -> None:
    with pytest.raises(iti41.SoapError, match="AdhocQueryResponse expected"):
        read_query_response(iti41.registry_response(iti41.SUCCESS))


# ------------------------------------------------------------------------- ITI-43


def test_retrieve_request_and_response_are_valid() -> None:
    req = retrieve_request([DocumentRequest(REPOSITORY_ID, "1.2.3"),
                            DocumentRequest(REPOSITORY_ID, "1.2.4", "urn:oid:1.2.250")])
    assert_valid(req)
    doc = RetrievedDocument(REPOSITORY_ID, "1.2.3", "text/xml", b"<ClinicalDocument/>")
    body, attachments = retrieve_response([doc], [iti41.RegistryError(
        "XDSMissingDocument", "document inconnu", location="1.2.4")])
    inline = iti41.inline_attachments(body, {k: v[0] for k, v in attachments.items()})
    assert_valid(inline)  # the schema's form: the document as base64
    got = read_retrieve_response(body, {k: v[0] for k, v in attachments.items()})
    assert got.result.status == iti41.PARTIAL
    assert got.documents == [doc] and got.document("1.2.3") == doc
    assert got.result.errors[0].location == "1.2.4"
    assert read_retrieve_response(inline, {}).documents == [doc]  # base64 form read too


@pytest.mark.parametrize("bad", [[], [DocumentRequest("", "1.2.3")],
                                 [DocumentRequest(REPOSITORY_ID, "")]])
def test_retrieve_request_needs_both_ids(bad: list[DocumentRequest]) -> None:
    with pytest.raises(ValueError):
        retrieve_request(bad)


def test_retrieve_response_with_broken_content_is_refused() -> None:
    body, _ = retrieve_response([RetrievedDocument(REPOSITORY_ID, "1", "text/xml", b"x")], [])
    with pytest.raises(iti41.SoapError, match="missing attachment"):
        read_retrieve_response(body, {})
    inc = body.find(f".//{{{iti41.XOP}}}Include")
    parent = inc.getparent()
    parent.remove(inc)
    parent.text = "not base64 at all!"
    with pytest.raises(iti41.SoapError, match="base64"):
        read_retrieve_response(body, {})


# ------------------------------------------------------------- against dmp-sim (mTLS)


def reader(break_glass: bool = False) -> VIHFIdentity:
    structure = VIHFIdentity(name_id="parcours", subject_name="Parcours, tests",
                             structure_id="1120459876")
    return reader_identity(structure, name_id="810001234567", subject_name="MARTIN Claire",
                           roles=[Role("10", PROFESSION_SYSTEM, "Médecin")],
                           break_glass=break_glass)


def client(dmp_server: RunningSim, certs: Certs, **extra: Any) -> DMPClient:
    return DMPClient(DMPConfig.from_options(dmp_options(dmp_server.url, certs, **extra)))


async def test_find_documents_against_dmp_sim(dmp_server: RunningSim, certs: Certs,
                                              sim: Any) -> None:
    assert sim.state.seed(PATIENT) == 4
    sim.state.seed(OTHER)
    c = client(dmp_server, certs)
    try:
        r = await c.find_documents(FindDocuments(PATIENT), identity=reader())
        assert r.result.ok
        titles = sorted(e.title for e in r.entries)
        # Approved only by default: the replaced first version of the lab report is not there,
        # and nothing of the other patient.
        assert titles == ["Bilan biologique", "Lettre de liaison à la sortie",
                          "Scanner thoracique"]
        assert {e.patient_id for e in r.entries} == {PATIENT}
        both = await c.find_documents(FindDocuments(PATIENT, statuses=(APPROVED, DEPRECATED)))
        assert len(both.entries) == 4
        assert {e.status for e in both.entries} == {APPROVED, DEPRECATED}
        lab = await c.find_documents(FindDocuments(
            PATIENT, type_codes=(Code("11502-2", LOINC),), statuses=(APPROVED, DEPRECATED),
            creation_from="202611150000"))
        assert [e.title for e in lab.entries] == ["Bilan biologique"]
        none = await c.find_documents(FindDocuments(PATIENT, creation_to="2026"))
        assert none.result.ok and none.entries == []
    finally:
        await c.close()
    # The VIHF was the reader's, in normal access mode, signed with the structure's key.
    attrs = sim.state.vihf[0]
    assert attrs["urn:oasis:names:tc:xacml:2.0:subject:role"] == ["10"]
    assert attrs["urn:oasis:names:tc:xspa:1.0:subject:subject-id"] == ["MARTIN Claire"]
    assert attrs["urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"] == ["normal"]
    assert attrs["urn:oasis:names:tc:xacml:2.0:resource:resource-id"] == [PATIENT]
    # Without a reader identity, the feed's own (automated) identity is used.
    assert sim.state.vihf[1]["urn:oasis:names:tc:xacml:2.0:subject:role"] == ["AUTOMATE"]


async def test_break_glass_is_declared_in_the_vihf(dmp_server: RunningSim, certs: Certs,
                                                   sim: Any) -> None:
    sim.state.seed(PATIENT)
    c = client(dmp_server, certs)
    try:
        r = await c.find_documents(FindDocuments(PATIENT), identity=reader(break_glass=True))
    finally:
        await c.close()
    assert r.result.ok
    assert sim.state.vihf[-1]["urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"] == [
        "bris_de_glace"]


async def test_retrieve_against_dmp_sim(dmp_server: RunningSim, certs: Certs,
                                        sim: Any) -> None:
    sim.state.seed(PATIENT)
    c = client(dmp_server, certs)
    try:
        found = await c.find_documents(FindDocuments(PATIENT))
        entry = next(e for e in found.entries if e.title == "Scanner thoracique")
        r = await c.retrieve(PATIENT, [DocumentRequest(entry.repository_id, entry.unique_id)],
                             identity=reader())
        assert r.result.ok
        doc = r.document(entry.unique_id)
        assert doc is not None and doc.mime_type == "text/xml"
        assert hashlib.sha1(doc.content).hexdigest() == entry.hash  # the registered bytes
        assert len(doc.content) == entry.size
        assert b"Pas d'anomalie du parenchyme pulmonaire." in doc.content
        missing = await c.retrieve(PATIENT, [DocumentRequest(REPOSITORY_ID, "1.2.3.404"),
                                             DocumentRequest(entry.repository_id,
                                                             entry.unique_id)])
        assert missing.result.status == iti41.PARTIAL
        assert [(e.code, e.location) for e in missing.result.errors] == [
            ("XDSMissingDocument", "1.2.3.404")]
        assert [d.unique_id for d in missing.documents] == [entry.unique_id]
        other_repo = await c.retrieve(PATIENT, [DocumentRequest("1.2.3", entry.unique_id)])
        assert [e.code for e in other_repo.result.errors] == ["XDSUnknownRepositoryId"]
        # A VIHF naming another patient than the document's is refused.
        wrong = await c.retrieve(OTHER, [DocumentRequest(entry.repository_id,
                                                         entry.unique_id)])
        assert not wrong.result.ok and wrong.documents == []
        assert [e.code for e in wrong.result.errors] == ["XDSPatientIdDoesNotMatch"]
    finally:
        await c.close()


@pytest.mark.parametrize("setup, code", [
    (lambda st: st.unknown.add("1234567890123"), "XDSUnknownPatientId"),
    (lambda st: st.closed.add("1234567890123"), "DMPClosed"),
    (lambda st: setattr(st, "refuse", "XDSRegistryError"), "XDSRegistryError"),
])
async def test_refusals_come_back_as_registry_errors(dmp_server: RunningSim, certs: Certs,
                                                     sim: Any, setup: Any, code: str) -> None:
    sim.state.seed(PATIENT)
    setup(sim.state)
    c = client(dmp_server, certs)
    try:
        r = await c.find_documents(FindDocuments(PATIENT), identity=reader())
        assert r.result.status == iti41.FAILURE and r.entries == []
        assert [e.code for e in r.result.errors] == [code]
    finally:
        await c.close()


async def test_a_stalled_dmp_times_out(dmp_server: RunningSim, certs: Certs, sim: Any) -> None:
    sim.state.seed(PATIENT)
    sim.state.stall_seconds = 3.0
    c = client(dmp_server, certs, timeout=0.5)
    try:
        with pytest.raises(DMPUnavailable) as exc:
            await c.find_documents(FindDocuments(PATIENT))
        assert exc.value.code == "ReadTimeout"
    finally:
        await c.close()
        sim.state.stall_seconds = 0.0


def test_dmp_sim_command_seeds_documents() -> None:
    """`parcours dmp-sim --seed INS` as a user runs it: a process, a port, a real query."""
    port = _free_port()
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from engine.cli.main import main; main()", "dmp-sim",
         "--port", str(port), "--seed", "1234567890123"], cwd=root, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").json()["documents"] == 4:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "dmp-sim did not start"
            time.sleep(0.2)
        env = iti41.envelope(iti41.ITI18, "x", find_documents_request(FindDocuments(PATIENT)))
        r = httpx.post(f"http://127.0.0.1:{port}/dmp",
                       content=etree.tostring(env), headers={"Content-Type": (
                           f'application/soap+xml; action="{iti41.ITI18}"')})
        # No VIHF: the simulator refuses like the DMP, with a registry error, not a crash.
        msg = iti41.read_message(r.content, r.headers["content-type"])
        assert [e.code for e in read_query_response(msg.body).result.errors] == [
            "XDSRegistryError"]
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=10)[0].decode()
    assert "4 documents seeded for 1 patient(s)" in out
    assert "1234567890123" not in out  # never the patient's identifier on the console


# --------------------------------------------------- dmp-sim's answers to bad requests


def ask(sim: Any, action: str, body: etree._Element) -> tuple[int, iti41.SoapMessage]:
    env = iti41.envelope(action, "x", body)
    status, data, ctype = sim.handle(etree.tostring(env), (
        f'application/soap+xml; action="{action}"'))
    return status, iti41.read_message(data, ctype)


def test_simulator_refuses_bad_queries_as_the_registry_would() -> None:
    from connectors.dmp.simulator import Simulator, SimulatorState
    from connectors.dmp.stored_query import adhoc_query_request

    s = Simulator(SimulatorState(require_vihf=False))
    s.state.seed(PATIENT)
    cases = [
        (adhoc_query_request("urn:uuid:00000000-0000-0000-0000-000000000000", []),
         "XDSUnknownStoredQuery"),
        (adhoc_query_request(FIND_DOCUMENTS, [("$XDSDocumentEntryPatientId", f"'{PATIENT}'")]),
         "XDSRegistryError"),  # no status: FindDocuments requires one
        (adhoc_query_request(FIND_DOCUMENTS, [("$XDSDocumentEntryStatus", f"('{APPROVED}')")]),
         "XDSRegistryError"),  # no patient
    ]
    for body, code in cases:
        status, msg = ask(s, iti41.ITI18, body)
        assert status == 200
        r = read_query_response(msg.body)
        assert [e.code for e in r.result.errors] == [code] and r.entries == []
    # Not a query at all: a SOAP Sender fault, as for any malformed request.
    status, msg = ask(s, iti41.ITI18, etree.Element("{urn:x}Nonsense"))
    assert status == 400 and "AdhocQueryRequest" in (iti41.fault_reason(msg.body) or "")
    status, msg = ask(s, iti41.ITI43, etree.Element("{urn:x}Nonsense"))
    assert status == 400 and "RetrieveDocumentSetRequest" in (iti41.fault_reason(msg.body)
                                                              or "")
    # ObjectRef answers carry references only.
    status, msg = ask(s, iti41.ITI18, find_documents_request(FindDocuments(
        PATIENT, return_type="ObjectRef")))
    refs = read_query_response(msg.body)
    assert refs.entries == [] and len(refs.references) == 3


@pytest.mark.parametrize("consultation, says", [
    ("{timeout: -1}", "consultation/timeout: -1 is less than or equal to the minimum of 0"),
    ("{colour: red}", "unknown key 'colour' in destinations/dmp/options/consultation"),
    ("{profession: medecin}", "consultation/profession: 'medecin' is not valid"),
    ("{break_glass_roles: [nurse]}", "'nurse' is not one of admin, operator, clinician"),
])
def test_consultation_settings_are_checked_with_their_line(consultation: str,
                                                           says: str) -> None:
    from engine.config import ConfigError, load_text

    text = ("version: 1\nchannels:\n  main: {type: mllp, host: 127.0.0.1, port: 0}\n"
            "destinations:\n  dmp:\n    type: dmp\n    options:\n      url: http://x\n"
            f"      consultation: {consultation}\nroutes: []\n")
    with pytest.raises(ConfigError) as exc:
        load_text(text)
    assert "routes.yaml:9:" in str(exc.value) and says in str(exc.value)
    load_text(text.replace(consultation, "{timeout: 5, break_glass_roles: [clinician], "
                           "profession: '10^1.2.250.1.71.1.2.7^Médecin'}"))
