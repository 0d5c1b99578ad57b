"""CR-BIO generation, CDA schema + ANS schematron, XDS metadata and schemas, VIHF signature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from connectors.dmp.metadata import (
    MetadataError,
    document_entry,
    schema_errors,
    submission_set,
    submit_objects_request,
    update_status_request,
)
from safexml import parse
from transformers.cda.embedded import document_from_hl7
from transformers.cda.schematron import crbio_schematron, failed_asserts
from transformers.cda.validate import validate_cda

from .conftest import CORPUS, TRANS, Certs, lab_oru_with_ins

V3 = "{urn:hl7-org:v3}"
EXAMPLES = sorted((CORPUS / "cda" / "ans-examples").glob("BIO-CR-BIO_*.xml"))
SAMPLES = [p for p in sorted(TRANS.glob("*/*/*")) if p.suffix in (".hl7", ".er7")
           and "INIT_N1.er7" not in p.name and p.name != "ack.er7"]


def build(status: str = "F") -> tuple[bytes, Any]:
    from transformers.cda.to_crbio import to_crbio
    from transformers.exchange import Exchange
    from transformers.hl7.reader import parse_message

    text = lab_oru_with_ins(status)
    ex = to_crbio(Exchange(3, "lab", text.encode(), text, parse_message(text),
                           headers={"message_type": "ORU"}))
    assert ex is not None
    return ex.body, ex


def test_generated_crbio_passes_cda_schema_and_ans_schematron() -> None:
    body, ex = build()
    report = validate_cda(body)
    assert report.valid, report.summary()
    assert failed_asserts(body) == []
    # The feed numbers the version (versioning=feed): see test_successive_corrections.
    assert ex.content_type == "application/cda+xml; versioning=feed"
    assert ex.headers["dmp_action"] == "submit"


def test_generated_crbio_content() -> None:
    root = parse(build()[0])
    ids = [(i.get("root"), i.get("extension")) for i in root.iterfind(
        f"{V3}recordTarget/{V3}patientRole/{V3}id")]
    assert ("1.2.250.1.213.1.4.10", "279035121518989") in ids
    for path in ("author", "custodian", "legalAuthenticator", "documentationOf",
                 "inFulfillmentOf"):
        assert root.find(f"{V3}{path}") is not None, path
    obs = root.xpath("//c:observation[c:templateId/@root='1.3.6.1.4.1.19376.1.3.1.6']",
                     namespaces={"c": "urn:hl7-org:v3"})
    assert len(obs) == 12
    glucose = obs[0]
    code = glucose.find(f"{V3}code")
    assert code.get("code") == "14749-6" and code.get("codeSystem") == "2.16.840.1.113883.6.1"
    assert code.find(f"{V3}translation").get("code") == "GLU"  # local code kept
    value = glucose.find(f"{V3}value")
    assert value.get("unit") == "mmol/L" and value.get("value") == "5.83"
    rr = glucose.find(f"{V3}referenceRange/{V3}observationRange/{V3}value")
    assert rr.find(f"{V3}low").get("value") == "3.9" and rr.find(f"{V3}high").get("value") == "6.1"
    assert glucose.find(f"{V3}interpretationCode").get("code") == "N"
    creat = obs[1].find(f"{V3}value")
    assert creat.get("unit") == "umol/L"  # UCUM, not µmol/L
    local = obs[11].find(f"{V3}code")  # unmapped: no LOINC, the local code as translation
    assert local.get("nullFlavor") == "OTH"
    assert local.find(f"{V3}translation").get("code") == "ZZLOC"
    assert obs[11].find(f"{V3}interpretationCode").get("code") == "H"


def test_corrected_oru_builds_a_replacing_version() -> None:
    body, ex = build("C")
    root = parse(body)
    assert root.find(f"{V3}versionNumber").get("value") == "2"
    assert root.find(f"{V3}relatedDocument").get("typeCode") == "RPLC"
    assert ex.headers["dmp_action"] == "replace"
    assert validate_cda(body).valid and failed_asserts(body) == []


def test_no_ins_no_crbio() -> None:
    from transformers.cda.to_crbio import NoINS, to_crbio
    from transformers.exchange import Exchange
    from transformers.hl7.reader import parse_message

    text = (Path(__file__).parents[1] / "loinc/data/oru_cerballiance-idf-demo_12.hl7").read_text(
        encoding="utf-8")
    with pytest.raises(NoINS):
        to_crbio(Exchange(1, "c", text.encode(), text, parse_message(text),
                          headers={"message_type": "ORU"}))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_ans_examples_pass_the_compiled_schematron(path: Path) -> None:
    assert failed_asserts(path.read_bytes()) == []


def test_schematron_reports_failed_asserts() -> None:
    data = EXAMPLES[0].read_bytes().replace(
        b"<title>Compte rendu d'examens biologiques</title>", b"<title>Autre</title>")
    data = data.replace(b'<versionNumber value="1"/>', b'<versionNumber value="0"/>')
    patterns = {f.pattern for f in crbio_schematron().validate(data)}
    assert "Entete_CR-BIO" in patterns


def test_schematron_value_set_lookup() -> None:
    body = build()[0].replace(b'<interpretationCode code="N"', b'<interpretationCode code="ZZ"',
                              1)
    found = failed_asserts(body)
    assert any(f.pattern == "JDV_HL7_ObservationInterpretation-CISIS" for f in found)


def test_schema_errors_have_line_numbers_and_document_is_kept() -> None:
    data = EXAMPLES[0].read_bytes().replace(b"<realmCode", b"<unexpected/><realmCode", 1)
    report = validate_cda(data)
    assert not report.valid and report.errors[0].line > 1
    assert "unexpected" in report.errors[0].message


def _entry(cda: bytes, masking: list[str] | None = None) -> Any:
    return document_entry(cda, parse(cda), masking=masking or [])


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_submit_objects_request_validates_against_xds_schemas(path: Path) -> None:
    doc = document_from_hl7(path.read_text(encoding="utf-8"))
    entry = _entry(doc.cda, doc.masking)
    sset = submission_set(entry, source_id="1.2.3", unique_id="1.2.3.4")
    sor = submit_objects_request(sset, entry, replaces_entry_uuid="urn:uuid:"
                                 "00000000-0000-0000-0000-000000000001")
    assert schema_errors(sor) == []
    assert schema_errors(update_status_request(sset, entry.entry_uuid)) == []
    assert entry.patient_id.endswith("&ISO^NH") and "^^^&1.2.250.1.213.1.4." in entry.patient_id


def test_provide_and_register_request_validates() -> None:
    from connectors.dmp import iti41

    body = build()[0]
    entry = _entry(body)
    sset = submission_set(entry, source_id="1.2.3", unique_id="1.2.3.4")
    req = iti41.provide_and_register(submit_objects_request(sset, entry),
                                     {entry.entry_uuid: "doc1@x"})
    assert schema_errors(iti41.inline_attachments(req, {"doc1@x": body})) == []


def test_crbio_metadata_mapping() -> None:
    entry = _entry(build()[0], ["MASQUE_PS"])
    assert entry.type_code.code == "11502-2"
    assert entry.class_code.code == "10"
    assert entry.format_code.code == "urn:ihe:lab:xd-lab:2008"
    assert entry.facility_type.code == "SA25"
    assert entry.practice_setting.code == "AMBULATOIRE"
    assert [c.code for c in entry.confidentiality] == ["N", "MASQUE_PS"]
    assert entry.confidentiality[1].scheme == "1.2.250.1.213.1.1.4.13"
    assert entry.authors[0].person.endswith("&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS")
    assert entry.creation_time == "20250114083000"  # OBR-22/MSH-7 09:30 +0100 → UTC
    assert len(entry.hash) == 40


def test_masking_from_hl7_options() -> None:
    path = TRANS / "MDM/Transmission_initiale_MDM/message_MDM_CR_Radio_INIT_N1_Base64.er7"
    doc = document_from_hl7(path.read_text(encoding="utf-8"))
    assert doc.masking == ["INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX"]
    assert doc.secret_connection is True


def test_invalid_metadata_is_refused_locally() -> None:
    body = build()[0].replace(b'code="SA25"', b'code="XX99"')
    with pytest.raises(MetadataError, match="healthcareFacilityTypeCode"):
        _entry(body)
    with pytest.raises(MetadataError, match="masking"):
        _entry(build()[0], ["NOT_A_CODE"])


def test_simulator_refuses_invalid_metadata(certs: Certs) -> None:
    """A request whose metadata breaks the CI-SIS value sets gets XDSRegistryMetadataError."""
    from connectors.dmp import iti41
    from connectors.dmp.saml import VIHFIdentity, build_assertion
    from connectors.dmp.simulator import Simulator

    body = build()[0]
    entry = _entry(body)
    entry.type_code = type(entry.type_code)("99999-9", "2.16.840.1.113883.6.1")
    sset = submission_set(entry, source_id="1.2.3", unique_id="1.2.3.5")
    req = iti41.provide_and_register(submit_objects_request(sset, entry),
                                     {entry.entry_uuid: "d@x"})
    vihf = build_assertion(VIHFIdentity("n", "s", "1"), entry.patient_id,
                           certs.sign_cert.read_bytes(), certs.sign_key.read_bytes())
    env = iti41.envelope(iti41.ITI41, "https://dmp", req, security=vihf)
    data, ctype = iti41.mtom(env, {"d@x": (body, "text/xml")}, iti41.ITI41)
    status, out, out_type = Simulator().handle(data, ctype)
    result = iti41.read_registry_result(iti41.read_message(out, out_type).body)
    assert status == 200 and not result.ok
    assert result.errors[0].code == "XDSRegistryMetadataError"
    assert "typeCode" in result.errors[0].context


def test_vihf_signature_verifies_with_the_test_certificate(certs: Certs) -> None:
    from connectors.dmp.saml import (
        InvalidAssertion,
        VIHFIdentity,
        build_assertion,
        verify_assertion,
    )

    a = build_assertion(VIHFIdentity("resp", "Parcours", "1120459876"),
                        "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH",
                        certs.sign_cert.read_bytes(), certs.sign_key.read_bytes())
    sig = a.find("{http://www.w3.org/2000/09/xmldsig#}Signature")
    assert a.index(sig) == 1  # right after Issuer
    method = sig.find(".//{http://www.w3.org/2000/09/xmldsig#}SignatureMethod")
    assert method.get("Algorithm").endswith("rsa-sha256")
    c14n = sig.find(".//{http://www.w3.org/2000/09/xmldsig#}CanonicalizationMethod")
    assert c14n.get("Algorithm") == "http://www.w3.org/2001/10/xml-exc-c14n#"
    attrs = verify_assertion(a, certs.sign_cert.read_bytes())
    assert attrs["Authentification_Mode"] == ["INDIRECTE"]
    assert attrs["urn:oasis:names:tc:xacml:2.0:resource:resource-id"] == [
        "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"]
    with pytest.raises(InvalidAssertion):
        verify_assertion(a, certs.other_sign_cert.read_bytes())
    tampered = etree.fromstring(etree.tostring(a).replace(b"1120459876", b"9999999999"))
    with pytest.raises(InvalidAssertion):
        verify_assertion(tampered, certs.sign_cert.read_bytes())


def test_feed_renumbering_keeps_the_document_valid() -> None:
    """The `dmp` destination renumbers CR-BIO versions (transformers/cda/versioning.py): the
    result still passes the CDA schema and the ANS schematron."""
    from transformers.cda.versioning import renumber

    first, _ = build("F")
    v3 = renumber(parse(first), 3, "1.2.250.1.213.1.1.9.999^lab.v2.X")
    root = parse(v3)
    assert root.find(f"{V3}versionNumber").get("value") == "3"
    assert ".v3." in root.find(f"{V3}id").get("extension")
    pid = root.find(f"{V3}relatedDocument[@typeCode='RPLC']/{V3}parentDocument/{V3}id")
    assert (pid.get("root"), pid.get("extension")) == ("1.2.250.1.213.1.1.9.999", "lab.v2.X")
    assert root.find(f"{V3}relatedDocument").getnext().tag == f"{V3}componentOf"
    assert validate_cda(v3).valid and failed_asserts(v3) == []
    # A correction whose earlier versions never reached the DMP is sent as a first version.
    corrected, _ = build("C")
    alone = parse(renumber(parse(corrected), 1, ""))
    assert alone.find(f"{V3}relatedDocument") is None
    assert alone.find(f"{V3}versionNumber").get("value") == "1"
