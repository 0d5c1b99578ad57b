"""The DMP feed through the whole engine: ORU over MLLP → store → router (`crbio`) → delivery
runner → `dmp` destination → dmp-sim over mutual TLS, on SQLite and PostgreSQL.

Covers what only the store can give the feed: successive corrections numbered 1, 2, 3 with
each RPLC pointing at its predecessor, and the DMP's error codes kept on the delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from lxml import etree
from sqlalchemy import select

from connectors.dmp.metadata import APPROVED, DELETED, DEPRECATED
from engine.store.models import deliveries, dmp_documents

from .conftest import Certs, RunningSim, dmp_options, lab_oru_with_ins

V3 = "{urn:hl7-org:v3}"
INS = "279035121518989"

CRBIO_OPTIONS = """\
transformer_options:
  crbio:
    document_oid: 1.2.250.1.213.1.1.9.999
    laboratory:
      id: "1750000001"
      name: Laboratoire de biologie Paris 15
      address: {street: 12 rue Lecourbe, postal_code: "75015", city: PARIS}
      telecom: tel:0145000000
    custodian:
      id: "1750000002"
      name: Plateforme régionale Parcours
    biologist: {id: "810001234567", family: PASTEUR, given: Louise, prefix: Dr}
"""


def routes(sim_url: str, certs: Certs, *, max_attempts: int = 3, crbio: bool = True) -> str:
    options = json.dumps(dmp_options(sim_url, certs))
    return f"""\
version: 1
{CRBIO_OPTIONS if crbio else ""}
channels:
  main: {{type: mllp, host: 127.0.0.1, port: 0}}
destinations:
  dmp:
    type: dmp
    retry: {{max_attempts: {max_attempts}, initial_delay: 0.1, max_delay: 0.3, jitter: 0}}
    options: {options}
routes:
  - name: lab-to-dmp
    when: {{message_type: ORU, trigger_event: R01}}
    transform: [crbio]
    to: [dmp]
"""


def oru(status: str, control_id: str) -> bytes:
    text = lab_oru_with_ins(status).replace("|CERBAL-12|", f"|{control_id}|")
    return text.replace("\n", "\r").encode()


async def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    for _ in range(int(timeout / 0.05)):
        value = await asyncio.to_thread(check)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {check.__doc__ or check}")


def rows_once(eng: Any, status: str) -> list[dict[str, Any]]:
    """The delivery rows once the first one has `status` (else [], to wait on)."""
    rows = delivery_rows(eng)
    return rows if rows and rows[0]["status"] == status else []


def delivery_rows(eng: Any) -> list[dict[str, Any]]:
    with eng.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(deliveries.c.id, deliveries.c.status, deliveries.c.error_code,
                   deliveries.c.attempts, deliveries.c.last_error)
            .order_by(deliveries.c.id)).mappings()]


async def test_successive_corrections_replace_the_latest_version(
        store_url: str, make_engine: Any, dmp_server: RunningSim, certs: Certs,
        sim: Any) -> None:
    """F, then C, then C for the same order: versions 1, 2, 3; only 3 stays approved and each
    RPLC points at its predecessor (CDA relatedDocument and XDS association alike)."""
    eng = await make_engine(routes(dmp_server.url, certs), store_url=store_url, route=True)
    for n, status in enumerate(("F", "C", "C"), start=1):
        ack = await eng.send(oru(status, f"CERBAL-12-{n}"))
        assert b"MSA|CA" in ack  # enhanced mode: MSH-15 = AL
        # Each one reaches the DMP before the next is sent (the order a lab would send them
        # in; the runner keeps it for one patient anyway).
        await wait_for(lambda n=n: len(sim.state.documents) == n)

    def all_delivered() -> bool:
        """every delivery delivered"""
        return all(r["status"] == "delivered" for r in delivery_rows(eng))

    await wait_for(all_delivered)
    docs = {}
    for d in sim.state.documents.values():
        root = etree.fromstring(d.content)
        docs[int(root.find(f"{V3}versionNumber").get("value"))] = (d, root)
    assert sorted(docs) == [1, 2, 3]
    assert [docs[v][0].status for v in (1, 2, 3)] == [DEPRECATED, DEPRECATED, APPROVED]
    assert docs[1][0].replaces == ""
    assert docs[2][0].replaces == docs[1][0].entry_uuid
    assert docs[3][0].replaces == docs[2][0].entry_uuid
    set_ids = {(r.find(f"{V3}setId").get("root"), r.find(f"{V3}setId").get("extension"))
               for _, r in docs.values()}
    assert len(set_ids) == 1  # one set, three versions
    for v in (2, 3):
        parent = docs[v][1].find(f"{V3}relatedDocument[@typeCode='RPLC']/{V3}parentDocument/"
                                 f"{V3}id")
        prev = docs[v - 1][0].unique_id
        assert f"{parent.get('root')}^{parent.get('extension')}" == prev
        assert f".v{v}." in docs[v][0].unique_id
    # The record the destination keeps in the store.
    with eng.store.engine.connect() as conn:
        recorded = [tuple(r) for r in conn.execute(
            select(dmp_documents.c.version, dmp_documents.c.status, dmp_documents.c.unique_id)
            .order_by(dmp_documents.c.version))]
    assert [(v, s) for v, s, _ in recorded] == [(1, "submitted"), (2, "submitted"),
                                                (3, "submitted")]
    assert [u for _, _, u in recorded] == [docs[v][0].unique_id for v in (1, 2, 3)]
    # The laboratory, custodian and biologist come from transformer_options.crbio.
    root = docs[3][1]
    assert root.find(f"{V3}custodian//{V3}name").text == "Plateforme régionale Parcours"
    assert root.find(f"{V3}author//{V3}representedOrganization/{V3}name").text == (
        "Laboratoire de biologie Paris 15")
    assert root.find(f"{V3}legalAuthenticator//{V3}family").text == "PASTEUR"


async def test_deletion_removes_the_latest_accepted_version(
        store_url: str, make_engine: Any, dmp_server: RunningSim, certs: Certs,
        sim: Any) -> None:
    """F, C, then D (OBX-11, HL7 v2.5.1 table 0085: deleted) for the same order: the report's
    latest version (2) is deleted in the DMP (ITI-57); the deletion itself submits nothing."""
    eng = await make_engine(routes(dmp_server.url, certs), store_url=store_url, route=True)
    for n, status in enumerate(("F", "C"), start=1):
        await eng.send(oru(status, f"CERBAL-12-{n}"))
        await wait_for(lambda n=n: len(sim.state.documents) == n)
    deletion = oru("D", "CERBAL-12-3").replace(b"|H|||F", b"|H|||D")  # every OBX-11 = D
    assert b"|||F" not in deletion.split(b"OBX|", 1)[1]
    await eng.send(deletion)

    def deleted() -> bool:
        """a version deleted"""
        return any(d.status == DELETED for d in sim.state.documents.values())

    await wait_for(deleted)
    by_version = {int(etree.fromstring(d.content).find(f"{V3}versionNumber").get("value")): d
                  for d in sim.state.documents.values()}
    assert sorted(by_version) == [1, 2]  # nothing new was submitted for the deletion
    assert by_version[1].status == DEPRECATED and by_version[2].status == DELETED

    def all_delivered() -> bool:
        """every delivery delivered"""
        return all(r["status"] == "delivered" for r in delivery_rows(eng))

    await wait_for(all_delivered)
    with eng.store.engine.connect() as conn:
        recorded = [tuple(r) for r in conn.execute(
            select(dmp_documents.c.version, dmp_documents.c.status)
            .order_by(dmp_documents.c.version))]
        ctype = conn.execute(select(deliveries.c.content_type)
                             .order_by(deliveries.c.id.desc()).limit(1)).scalar()
    assert recorded == [(1, "submitted"), (2, "deleted")]
    assert ctype is not None and "action=delete" in ctype


async def test_timeline_event_says_why_the_report_was_not_fed(
        store_url: str, make_engine: Any, dmp_server: RunningSim, certs: Certs,
        sim: Any) -> None:
    """ZFA opposition (PAM-FR, ANS sample) then a lab report for the same INS: the report is on
    the timeline, nothing reaches the DMP, and the result event says why."""
    from engine.timeline.auth import Principal
    from tests.conftest import corpus

    options = json.dumps(dmp_options(dmp_server.url, certs))
    text = f"""\
version: 1
{CRBIO_OPTIONS}
channels:
  main: {{type: mllp, host: 127.0.0.1, port: 0}}
destinations:
  timeline: {{type: timeline}}
  dmp: {{type: dmp, options: {options}}}
routes:
  - {{name: adt-timeline, when: {{message_type: ADT}}, transform: [adt_events], to: [timeline]}}
  - {{name: lab-timeline, when: {{message_type: ORU}}, transform: [oru_events], to: [timeline]}}
  - {{name: lab-to-dmp, when: {{message_type: ORU}}, transform: [crbio], to: [dmp]}}
"""
    eng = await make_engine(text, store_url=store_url, route=True)
    opposed = corpus("hl7v2", "ans", "Vague_2", "Consentement_DMP_PAMFR",
                     "NonConsentementConsultation_OppositionAlimentation.er7").read_bytes()
    assert b"MSA|AA" in await eng.send(opposed.replace(b"\r\n", b"\r").replace(b"\n", b"\r"))

    def zfa_applied() -> bool:
        """the ADT on the timeline"""
        return all(r["status"] == "delivered" for r in delivery_rows(eng)) and bool(
            delivery_rows(eng))

    await wait_for(zfa_applied)
    # The report carries the traits of the ANS identity its INS belongs to: the demo ORU's own
    # (PATIENT DEMO, 1970) under that INS contradict the qualified identity the ADT set, and
    # identity vigilance would hold it for an operator (issue #15).
    await eng.send(oru("F", "CERBAL-OPP-1").replace(b"PATIENT^DEMO||19700101|F",
                                                    b"PAT-TROIS^DOMINIQUE||19790328|F"))
    timeline = eng.engine.timeline
    admin = Principal(None, "admin", "admin", None, "token")

    def result_event() -> dict[str, Any] | None:
        """the result event with its DMP outcome"""
        found = timeline.find_patients(admin, "INS|" + INS, None)
        if len(found) != 1:  # the ORU's identity may still be being reconciled
            return None
        events = timeline.read_timeline(admin, found[0]["id"], None, types=["result"])["events"]
        return events[0] if events and events[0].get("dmp", {}).get("state") not in (
            None, "pending") else None

    event = await wait_for(result_event)
    assert event["dmp"]["state"] == "not_sent_opposition"
    assert "opposed" in event["dmp"]["reason"]
    assert sim.state.documents == {}
    # The clinician's page shows it on the event (engine/ui, monitoring/ui/templates).
    from engine.ui.auth_adapter import _event

    pill = _event(event)["dmp"]
    assert pill == {"text": "DMP: not sent, the patient opposed feeding the DMP", "css": "warn"}


@pytest.mark.parametrize("failure,code", [
    ("unknown", "XDSUnknownPatientId"),
    ("closed", "DMPClosed"),
    ("metadata", "XDSRegistryMetadataError"),
])
async def test_permanent_dmp_errors_are_dead_with_the_dmps_code(
        store_url: str, make_engine: Any, dmp_server: RunningSim, certs: Certs, sim: Any,
        failure: str, code: str, capsys: pytest.CaptureFixture[str]) -> None:
    if failure == "unknown":
        sim.state.unknown = {INS}
    elif failure == "closed":
        sim.state.closed = {INS}
    payload = oru("F", "CERBAL-ERR")
    if failure == "metadata":
        # A family name longer than an ebRIM LongName (256): the sourcePatientInfo slot the
        # DMP receives breaks the XDS schema; only the registry finds it.
        payload = payload.replace(b"PATIENT^DEMO", b"P" * 300 + b"^DEMO")
    eng = await make_engine(routes(dmp_server.url, certs), store_url=store_url, route=True)
    assert b"MSA|CA" in await eng.send(payload)

    [row] = await wait_for(lambda: rows_once(eng, "dead"))
    assert row["error_code"] == code and row["attempts"] == 1  # permanent: no retry
    assert code in row["last_error"]
    from engine.cli.routes import cmd_deliveries
    from engine.settings import Settings

    cmd_deliveries(argparse.Namespace(status="failed", limit=10),
                   Settings.from_env({"PARCOURS_STORE_URL": store_url}))
    out = capsys.readouterr().out
    assert f"[{code}]" in out and "dmp / lab-to-dmp" in out


@pytest.mark.parametrize("failure,code", [("busy", "XDSRegistryBusy"), ("http503", "HTTP503")])
async def test_transient_dmp_errors_retry_then_deliver(
        store_url: str, make_engine: Any, dmp_server: RunningSim, certs: Certs, sim: Any,
        failure: str, code: str) -> None:
    sim.state.fail_next = [failure]
    eng = await make_engine(routes(dmp_server.url, certs, max_attempts=5), store_url=store_url,
                            route=True)
    assert b"MSA|CA" in await eng.send(oru("F", "CERBAL-BUSY"))

    [row] = await wait_for(lambda: rows_once(eng, "delivered"))
    assert row["attempts"] == 2 and row["error_code"] is None  # cleared once delivered
    from engine.store.models import delivery_attempts

    with eng.store.engine.connect() as conn:
        first = conn.execute(select(delivery_attempts.c.outcome, delivery_attempts.c.detail)
                             .order_by(delivery_attempts.c.id)).first()
    assert first is not None and first.outcome == "retry"
    assert len(sim.state.documents) == 1


async def test_transient_error_code_stays_while_waiting(
        store_url: str, make_engine: Any, dmp_server: RunningSim, certs: Certs,
        sim: Any) -> None:
    """Busy every time: the delivery waits in `retry` with the DMP's code, then gives up."""
    sim.state.fail_next = ["busy"] * 10
    eng = await make_engine(routes(dmp_server.url, certs, max_attempts=2), store_url=store_url,
                            route=True)
    assert b"MSA|CA" in await eng.send(oru("F", "CERBAL-BUSY2"))

    [row] = await wait_for(lambda: rows_once(eng, "dead"))
    assert row["error_code"] == "XDSRegistryBusy" and row["attempts"] == 2
    assert "gave up after 2 attempts" in row["last_error"]
