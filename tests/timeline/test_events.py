"""The event transformers on the corpus: what each message says, read field by field."""

from __future__ import annotations

import base64

import pytest

from transformers.events.cda import read_document
from transformers.events.common import EventError, hl7_time

from .conftest import ANS, DOCS, FHIR, edit, events_of, read


def test_ans_admission_movement_and_consent() -> None:
    env = events_of(read(*ANS, "SGL", "admission.er7"))
    assert env["format"] == "parcours.events"
    ids = {(i["type"], i["authority"], i["value"]) for i in env["patient"]["identifiers"]}
    assert ids == {("PI", "000897406", "000003"),
                   ("INS", "1.2.250.1.213.1.4.10", "279035121518989")}
    assert env["patient"]["identity_status"] == "VALI"
    mv, consent = env["events"]
    # ZBE|001^CHU-X^000897406|20240306110000||INSERT|N||Chir V^…^6268|Chir V^…^6268|HMS
    assert mv["type"] == "movement" and mv["action"] == "insert" and mv["trigger"] == "A01"
    assert mv["movement_id"] == "001" and mv["visit_number"] == "000897406"
    assert mv["at"] == "2024-03-06T10:00:00+00:00"  # 11:00 Paris (CET) = 10:00 UTC
    assert mv["patient_class"] == "I"
    assert mv["medical_ward"] == {"name": "Chir V", "id": "6268"}
    # ZFA|ACTIF|…|INO|…|IC|…: no opposition to feeding the DMP, consent to consultation
    assert consent["dmp_status"] == "ACTIF"
    assert consent["feeding_opposition"] is False and consent["consultation_consent"] is True


def test_ans_discharge_with_shifted_zbe() -> None:
    # ZBE|002^…|20240306110000|20260309102840||INSERT|N||Urgences^…^8782||HMS: action late
    mv = events_of(read(*ANS, "SGL", "sortie.er7"))["events"][0]
    assert (mv["trigger"], mv["action"], mv["movement_id"]) == ("A03", "insert", "002")
    assert mv["medical_ward"] == {"name": "Urgences", "id": "8782"}


@pytest.mark.parametrize(("name", "opposition", "consent"), [
    ("ConsentementConsultation_NonOppositionAlimentation.er7", False, True),
    ("NonConsentementConsultation_NonOppositionAlimentation.er7", False, False),
    ("NonRecueillieConsentementConsultation_NonOppositionAlimentation.er7", False, None),
    ("NonRecueillieConsentementConsultation_NonRecueillieOppositionAlimentation.er7", None,
     None),
    ("NonConsentementConsultation_OppositionAlimentation.er7", True, False),
])
def test_zfa_variants(name: str, opposition: bool | None, consent: bool | None) -> None:
    env = events_of(read(*ANS, "Vague_2", "Consentement_DMP_PAMFR", name))
    zfa = next(e for e in env["events"] if e["type"] == "consent")
    assert zfa["feeding_opposition"] is opposition
    assert zfa["consultation_consent"] is consent


def test_pv1_doctors_are_read() -> None:
    env = events_of(read(*ANS, "Vague_2", "Consentement_DMP_PAMFR",
                         "ConsentementConsultation_NonOppositionAlimentation.er7"))
    mv = env["events"][0]
    assert [d["id"] for d in mv["doctors"]["attending"]] == ["801234567897"]
    assert [d["id"] for d in mv["doctors"]["admitting"]] == ["801234567897"]


def test_fhir_merge_and_change_of_identifier() -> None:
    a40 = events_of(read(*FHIR, "ADT-A40-01.hl7"))
    assert a40["events"][0]["type"] == "merge"
    assert a40["events"][0]["absorbed"][0]["value"] == "56789"
    assert a40["patient"]["identifiers"][0]["value"] == "12345"
    a47 = events_of(read(*FHIR, "ADT-A47-01.hl7"))
    assert a47["events"][0]["type"] == "change_identifier"
    assert a47["events"][0]["absorbed"][0]["value"] == "MR102"


def test_cancel_without_zbe_names_what_it_cancels() -> None:
    mv = events_of(read(*FHIR, "ADT-A11-01.hl7"))["events"][0]
    assert mv["action"] == "cancel" and mv["cancels"] == ["A01", "A04"]
    assert mv["by_key"] is False
    mv = events_of(read(*FHIR, "ADT-A13-01.hl7"))["events"][0]
    assert mv["cancels"] == ["A03"]


def test_zbe_cancel_is_keyed_by_the_cancelled_movement() -> None:
    raw = read(*ANS, "SGL", "admission.er7")
    insert = events_of(raw)["events"][0]
    cancel_raw = edit(edit(edit(raw, "MSH", 9, "ADT^A11^ADT_A09"), "ZBE", 4, "CANCEL"),
                      "ZBE", 6, "A01")
    cancel = events_of(cancel_raw)["events"][0]
    assert cancel["action"] == "cancel" and cancel["key"] == insert["key"]
    assert cancel["cancels"] == ["A01"] and cancel["by_key"] is True


def test_oru_results_are_normalised_with_provenance() -> None:
    env = events_of(read(*FHIR, "LAB-ORU-1.hl7"))
    results = [e for e in env["events"] if e["type"] == "result"]
    assert len(results) == 2  # two OBR
    obs = {o["loinc"]: o for o in results[1]["observations"] if o["loinc"]}
    assert "26450-7" in obs
    o = obs["26450-7"]
    assert o["outcome"] == "normalised" and o["unit"] == "%"
    assert o["original"]["code"] and o["original"]["value"] == "2"


def test_ans_mdm_document_and_masking_flags() -> None:
    env = events_of(read(*DOCS, "MDM", "Transmission_initiale_MDM",
                         "message_MDM_CR_Radio_INIT_N1_Base64.er7"))
    (doc,) = env["events"]
    assert doc["type"] == "document" and doc["action"] == "new"
    assert doc["header"]["type_code"] == "18748-4"
    assert doc["header"]["document_id"] == "1.2.250.1.71.4.2.2.120456789.71024000081"
    assert doc["masking"] == {"MASQUE_PS": False, "INVISIBLE_PATIENT": True,
                              "INVISIBLE_REPRESENTANTS_LEGAUX": True,
                              "CONNEXION_SECRETE": True}
    assert base64.b64decode(doc["content_b64"]).startswith(b"<ClinicalDocument")


def test_ans_oru_replacement_and_deletion_actions() -> None:
    rplc = events_of(read(*DOCS, "ORU", "Remplacement_ORU",
                          "message_ORU_CR_Bio_RPLC_N3_SEGUR.hl7"))["events"][0]
    assert rplc["action"] == "replace" and rplc["header"]["parent_id"]
    dele = events_of(read(*DOCS, "ORU", "Suppression_ORU",
                          "message_ORU_CR_Bio_DEL_N3_SEGUR.hl7"))["events"][0]
    assert dele["action"] == "delete"


def test_cda_file_gives_a_document_event() -> None:
    env = events_of(read(*DOCS, "ORU", "Remplacement_ORU", "SEGUR_CR_Bio_CDA_Niv3_v2.xml"))
    (doc,) = env["events"]
    assert doc["action"] == "replace"  # relatedDocument typeCode RPLC
    assert any(i["type"] == "INS" for i in env["patient"]["identifiers"])


def test_orders_and_appointments() -> None:
    order = events_of(read(*FHIR, "ORM-O01-01.hl7"))["events"][0]
    assert order["test"]["compare"] == "LN|24725-4" and order["prescriber"]["id"] == "3850"
    oml = events_of(read(*FHIR, "OML-O21-01.hl7"))["events"][0]
    assert oml["type"] == "order" and oml["test"]["code"] == "57698-3"
    booked = events_of(read(*FHIR, "SIU-S12-01.hl7"))["events"][0]
    cancelled = events_of(read(*FHIR, "SIU-S15-01.hl7"))["events"][0]
    assert booked["action"] == "book" and cancelled["action"] == "cancel"
    assert booked["key"] == cancelled["key"]


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY x SYSTEM "http://127.0.0.1:9/secret">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1"/><title>&x;</title></ClinicalDocument>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1"/><title>&lol3;</title></ClinicalDocument>"""


def test_hostile_xml_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_network(*_a: object, **_k: object) -> None:
        raise AssertionError("the parser tried to use the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    for doc in (XXE, LAUGHS):
        with pytest.raises(EventError, match="refused"):
            read_document(doc)
    big = b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1"/>' + b" " * 2048 + b"</x>"
    with pytest.raises(EventError, match="exceeds"):
        read_document(big, max_bytes=1024)


def test_hostile_xml_in_an_mdm_fails_the_route() -> None:
    raw = read(*DOCS, "MDM", "Transmission_initiale_MDM", "message_MDM_CR_Radio_INIT_N1_Base64.er7")
    text = raw.decode("utf-8")
    start = text.index("^Base64^") + len("^Base64^")
    end = text.index("|", start)
    hostile = text[:start] + base64.b64encode(XXE).decode() + text[end:]
    with pytest.raises(EventError):
        events_of(hostile.encode("utf-8"))


def test_hl7_times() -> None:
    assert hl7_time("20240306110000") == "2024-03-06T10:00:00+00:00"
    assert hl7_time("20240706110000") == "2024-07-06T09:00:00+00:00"  # CEST
    assert hl7_time("198908181126+0215") == "1989-08-18T09:11:00+00:00"
    assert hl7_time("") is None and hl7_time("garbage") is None
