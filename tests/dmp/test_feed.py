"""End to end over a real mutual-TLS socket: dmp destination → dmp-sim → RegistryResponse."""

from __future__ import annotations

from typing import Any

import pytest

from channels.outbound.base import OutboundItem
from channels.outbound.dmp import OPPOSED, DMPDestination
from connectors.dmp.metadata import APPROVED, DELETED, DEPRECATED, RIM

from .conftest import TRANS, Certs, RunningSim, dmp_options

ORU = TRANS / "ORU"
MDM = TRANS / "MDM"


def item(payload: bytes, content_type: str = "application/hl7-v2", key: str = "k1",
         headers: dict[str, Any] | None = None) -> OutboundItem:
    return OutboundItem(delivery_id=1, message_id=1, route="r", destination="dmp",
                        payload=payload, content_type=content_type, patient_key="p", attempt=1,
                        idempotency_key=key, headers=headers or {})


def seed_entry(sim: Any, unique_id: str, patient_cx: str) -> None:
    """An entry the DMP already holds (fed before Parcours was connected)."""
    from lxml import etree

    from connectors.dmp.metadata import DE_PATIENT_ID, DE_UNIQUE_ID
    from connectors.dmp.simulator import StoredDocument

    eo = etree.Element(f"{{{RIM}}}ExtrinsicObject", id="urn:uuid:seed-" + unique_id)
    for scheme, value in ((DE_PATIENT_ID, patient_cx), (DE_UNIQUE_ID, unique_id)):
        etree.SubElement(eo, f"{{{RIM}}}ExternalIdentifier", identificationScheme=scheme,
                         value=value)
    sim.state.documents[eo.get("id")] = StoredDocument(
        eo.get("id"), unique_id, patient_cx, APPROVED, "", etree.tostring(eo), b"<seed/>")


def destination(dmp_server: RunningSim, certs: Certs, **kw: Any) -> DMPDestination:
    return DMPDestination("dmp", {"type": "dmp", "options": dmp_options(dmp_server.url, certs)},
                          **kw)


async def send(dest: DMPDestination, path: Any, key: str) -> Any:
    return await dest.send(item(path.read_bytes(), key=key))


async def test_mdm_chain_initial_replacement_deletion(dmp_server: RunningSim, certs: Certs,
                                                      sim: Any) -> None:
    dest = destination(dmp_server, certs)
    try:
        out = await send(dest, MDM / "Transmission_initiale_MDM" /
                         "message_MDM_CR_Radio_INIT_N1_Base64.er7", "init")
        assert out.kind == "delivered", out
        assert "Success" in (out.response or "")
        [first] = sim.state.documents.values()
        assert first.status == APPROVED
        out = await send(dest, MDM / "Remplacement_MDM" / "message_MDM_CR_Radio_RPLC_N1.er7",
                         "rplc")
        assert out.kind == "delivered", out
        assert first.status == DEPRECATED  # RPLC deprecates the replaced entry
        second = next(d for d in sim.state.documents.values() if d is not first)
        assert second.status == APPROVED
        out = await send(dest, MDM / "Suppression_MDM" / "message_MDM_CR_Radio_DEL_N1.er7",
                         "del")
        assert out.kind == "delivered", out
        assert second.status == DELETED
        assert sim.state.received.count("urn:ihe:iti:2010:UpdateDocumentSet") == 1
    finally:
        await dest.close()


async def test_masking_codes_land_in_confidentiality_code(dmp_server: RunningSim,
                                                          certs: Certs, sim: Any) -> None:
    """INIT MDM: INVISIBLE_PATIENT=Y, INVISIBLE_REP_LEGAUX=Y → J08 masking codes."""
    dest = destination(dmp_server, certs)
    try:
        out = await send(dest, MDM / "Transmission_initiale_MDM" /
                         "message_MDM_CR_Radio_INIT_N1_Base64.er7", "mask")
        assert out.kind == "delivered", out
        [doc] = sim.state.documents.values()
        from lxml import etree

        eo = etree.fromstring(doc.metadata)
        codes = [c.get("nodeRepresentation") for c in eo.findall(
            f"{{{RIM}}}Classification[@classificationScheme="
            "'urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f']")]
        assert codes == ["N", "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX"]
    finally:
        await dest.close()


async def test_oru_chain(dmp_server: RunningSim, certs: Certs, sim: Any) -> None:
    """ORU samples: initial; the replacement refers to a version .12 the samples never send,
    so it is fed first as the DMP would already hold it; then the deletion of .12."""
    dest = destination(dmp_server, certs)
    try:
        out = await send(dest, ORU / "Transmission_initiale_ORU" /
                         "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7", "oru-init")
        assert out.kind == "delivered", out
        out = await send(dest, ORU / "Remplacement_ORU" / "message_ORU_CR_Bio_RPLC_N3_SEGUR.hl7",
                         "oru-rplc")
        assert out.kind == "dead" and "not in the DMP" in out.detail  # parent .12 unknown
        seed_entry(sim, "1.2.250.1.213.1.1.12", "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH")
        out = await send(dest, ORU / "Remplacement_ORU" / "message_ORU_CR_Bio_RPLC_N3_SEGUR.hl7",
                         "oru-rplc-2")
        assert out.kind == "delivered", out
        out = await send(dest, ORU / "Suppression_ORU" / "message_ORU_CR_Bio_DEL_N3_SEGUR.hl7",
                         "oru-del")
        # The ANS deletion sample's CDA names another patient (INS-NIR 277076322082910, OID .8)
        # than the document .12 it deletes: the DMP refuses, and so does the simulator.
        assert out.kind == "dead" and "XDSPatientIdDoesNotMatch" in out.detail
        statuses = sorted(d.status.rsplit(":", 1)[-1] for d in sim.state.documents.values())
        assert statuses == ["Approved", "Approved", "Deprecated"]
    finally:
        await dest.close()


async def test_opposition_stops_the_feed(dmp_server: RunningSim, certs: Certs,
                                         sim: Any) -> None:
    seen: list[str] = []

    def consent(it: OutboundItem) -> tuple[bool, str]:
        seen.append(it.idempotency_key)
        return False, OPPOSED

    dest = destination(dmp_server, certs, consent_check=consent)
    try:
        out = await send(dest, ORU / "Transmission_initiale_ORU" /
                         "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7", "opp")
        assert out.kind == "dead" and out.detail == "patient opposed feeding the DMP"
        assert seen == ["opp"] and sim.state.received == [] and not sim.state.documents
    finally:
        await dest.close()


async def test_async_consent_hook_allows(dmp_server: RunningSim, certs: Certs, sim: Any) -> None:
    async def consent(it: OutboundItem) -> tuple[bool, str]:
        return True, ""

    dest = destination(dmp_server, certs, consent_check=consent)
    try:
        out = await send(dest, ORU / "Transmission_initiale_ORU" /
                         "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7", "ok")
        assert out.kind == "delivered"
    finally:
        await dest.close()


@pytest.mark.parametrize("setup,code", [
    ({"unknown": {"279035121518989"}}, "XDSUnknownPatientId"),
    ({"closed": {"279035121518989"}}, "DMPClosed"),
])
async def test_permanent_errors_are_dead(dmp_server: RunningSim, certs: Certs, sim: Any,
                                         setup: dict[str, set[str]], code: str) -> None:
    for k, v in setup.items():
        setattr(sim.state, k, v)
    dest = destination(dmp_server, certs)
    try:
        out = await send(dest, ORU / "Transmission_initiale_ORU" /
                         "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7", "err")
        assert out.kind == "dead" and code in out.detail and code in (out.response or "")
    finally:
        await dest.close()


@pytest.mark.parametrize("failure", ["busy", "http503"])
async def test_transient_errors_are_retried_then_delivered(dmp_server: RunningSim, certs: Certs,
                                                           sim: Any, failure: str) -> None:
    sim.state.fail_next = [failure]
    dest = destination(dmp_server, certs)
    path = ORU / "Transmission_initiale_ORU" / "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7"
    try:
        first = await send(dest, path, "t")
        assert first.kind == "retry", first
        second = await send(dest, path, "t")
        assert second.kind == "delivered", second
    finally:
        await dest.close()


async def test_resend_after_lost_answer_is_delivered_once(dmp_server: RunningSim, certs: Certs,
                                                          sim: Any) -> None:
    dest = destination(dmp_server, certs)
    path = ORU / "Transmission_initiale_ORU" / "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7"
    try:
        assert (await send(dest, path, "same")).kind == "delivered"
        again = await send(dest, path, "same")  # as after a crash before the outcome was saved
        assert again.kind == "delivered" and "already" in again.detail
        assert len(sim.state.documents) == 1
    finally:
        await dest.close()


async def test_wrong_vihf_signer_is_refused(dmp_server: RunningSim, certs: Certs,
                                            sim: Any) -> None:
    sim.state.trusted_cert = certs.other_sign_cert.read_bytes()
    dest = destination(dmp_server, certs)
    try:
        out = await send(dest, ORU / "Transmission_initiale_ORU" /
                         "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7", "sig")
        assert out.kind == "dead" and "VIHF signature invalid" in out.detail
    finally:
        await dest.close()


async def test_crbio_route_to_the_dmp(dmp_server: RunningSim, certs: Certs, sim: Any,
                                      crbio_exchange: Any) -> None:
    """A lab ORU turned into CR-BIO by the `crbio` transformer is accepted by the DMP."""
    from transformers.builtin import BUILTIN

    ex = BUILTIN["crbio"](crbio_exchange)
    payload, ctype = ex.payload()
    dest = destination(dmp_server, certs)
    try:
        out = await dest.send(item(payload, ctype, key="crbio", headers=ex.headers))
        assert out.kind == "delivered", out
        [doc] = sim.state.documents.values()
        assert doc.content == payload
    finally:
        await dest.close()


async def test_unreachable_dmp_is_retried(certs: Certs) -> None:
    from .conftest import _free_port

    dest = DMPDestination("dmp", {"type": "dmp", "options": dmp_options(
        f"https://127.0.0.1:{_free_port()}/dmp", certs)})
    try:
        out = await send(dest, ORU / "Transmission_initiale_ORU" /
                         "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7", "down")
        assert out.kind == "retry"
    finally:
        await dest.close()


def test_factory_builds_the_dmp_destination(certs: Certs) -> None:
    from channels.outbound.factory import build_destination

    d = build_destination("dmp", {"type": "dmp", "options": dmp_options("https://x/dmp", certs)})
    assert d.type == "dmp"


SECRET_ATTR = "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code"


async def test_secret_connection_is_asked_in_the_vihf(dmp_server: RunningSim, certs: Certs,
                                                      sim: Any) -> None:
    """MetaDMPMSS CONNEXION_SECRETE=Y (the ANS MDM INIT sample) → the VIHF of every
    transaction carries the confidentiality-code attribute; =N (ORU INIT sample) → it does not
    (ANS HL7 v2 CDA transmission guide, "Mapping VIHF pour le DMP")."""
    dest = destination(dmp_server, certs)
    try:
        out = await send(dest, MDM / "Transmission_initiale_MDM" /
                         "message_MDM_CR_Radio_INIT_N1_Base64.er7", "secret")
        assert out.kind == "delivered", out
        assert sim.state.vihf[-1][SECRET_ATTR] == ["INVISIBLE_REPRESENTANTS_LEGAUX"]
        assert sim.state.vihf[-1]["VIHF_Version"] == ["4.0"]
        out = await send(dest, ORU / "Transmission_initiale_ORU" /
                         "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7", "not-secret")
        assert out.kind == "delivered", out
        assert SECRET_ATTR not in sim.state.vihf[-1]
    finally:
        await dest.close()


async def test_secret_connection_code_and_lps_id_are_configurable(
        dmp_server: RunningSim, certs: Certs, sim: Any) -> None:
    opts = dmp_options(dmp_server.url, certs)
    opts["identity"] = {**opts["identity"],  # type: ignore[dict-item]
                        "secret_connection_code": "R^2.16.840.1.113883.5.25^Restreint",
                        "lps_id": "1.2.250.1.999.1.1", "vihf_version": "3.0"}
    dest = DMPDestination("dmp", {"type": "dmp", "options": opts})
    try:
        out = await send(dest, MDM / "Transmission_initiale_MDM" /
                         "message_MDM_CR_Radio_INIT_N1_Base64.er7", "secret-r")
        assert out.kind == "delivered", out
        seen = sim.state.vihf[-1]
        assert seen[SECRET_ATTR] == ["R"] and seen["LPS_ID"] == ["1.2.250.1.999.1.1"]
        assert seen["VIHF_Version"] == ["3.0"]
    finally:
        await dest.close()
