"""Issue #15, "The wrong patient": documents never move to another patient, identity
vigilance holds contradicting arrivals, HL7's explicit null withdraws an INS.

The corpus has no second identity under the ANS sample local id 1.2.3.4.567.8.9.10|
1234567890121, nor the third-party `Consultation_Note.xml` / `Discharge_Summary.xml`: the
variants below are the corpus documents with the one thing the issue describes changed (the
INS 277076322082910 and the traits the ANS test identity of that INS carries; another
custodian and patient under the same document id).
"""

from __future__ import annotations

import json

from engine.timeline.models import (
    documents,
    identity_history,
    patient_identifiers,
    patients,
    timeline_conflicts,
    timeline_events,
)
from transformers.hl7.reader import Message

from .conftest import ANS, TL, read

CDA = ("cda", "ans-examples")
TSH = (*CDA, "BIO-CR-BIO_2024.01_TSH_1.xml")
GLY = (*CDA, "BIO-CR-BIO_2024.01_Glycemie_mole.xml")
LDL = (*CDA, "LDL-SES_2022.01.xml")
LOCAL = ("1.2.3.4.567.8.9.10", "1234567890121")
INS_A, INS_B = "279035121518989", "277076322082910"
ADMISSION = (*ANS, "SGL", "admission.er7")


def other_person(raw: bytes) -> bytes:
    """The same local id, another INS and the traits of the ANS identity holding it."""
    return (raw.replace(INS_A.encode(), INS_B.encode())
            .replace(b"PAT-TROIS", b"NESSI").replace(b"DOMINIQUE", b"RUTH")
            .replace(b'<birthTime value="19790328"/>', b'<birthTime value="19770714"/>'))


def cda_env(raw: bytes, message_id: int) -> dict:
    from transformers.events.cda import cda_events
    from transformers.exchange import Exchange

    ex = Exchange(raw=raw, text="", message=None, headers={"message_type": "CDA"},
                  channel="drop",
                  message_id=message_id)
    out = cda_events(ex)
    assert out is not None
    return out.body


def apply_cda(tl: TL, raw: bytes, message_id: int) -> dict:
    return tl.timeline.apply(cda_env(raw, message_id))


def test_explicit_null_is_delete_not_two_quotes() -> None:
    msg = Message.parse('MSH|^~\\&|A|B|C|D|2024||ADT^A08|1|P|2.5\rPID|1||""^^^X&1.2&ISO^PI|'
                        '|""^JEAN||""|F')
    pid = msg.segment("PID")
    assert pid is not None
    assert pid.get(3, 1, 1) == "" and pid.is_null(3, 1, 1)
    assert pid.get(7) == "" and pid.is_null(7) and not pid.is_null(8)
    assert pid.components(5) == ["", "JEAN"] and pid.is_null(5, 1, 1)
    assert not pid.is_null(9)  # absent is not null
    assert msg.get("PID-7") == ""


def test_second_ins_on_a_local_id_is_held_not_linked(tl_any: TL) -> None:
    apply_cda(tl_any, read(*TSH), 1)
    counts = apply_cda(tl_any, other_person(read(*GLY)), 2)
    assert counts == {"applied": 0, "held": 1, "skipped": 0}
    pid = tl_any.patient_of(*LOCAL)
    (p,) = tl_any.rows(patients)
    assert (p["ins"], p["family"], p["birth_date"]) == (INS_A, "PAT-TROIS", "19790328")
    assert [i["value"] for i in tl_any.rows(patient_identifiers,
                                            patient_identifiers.c.type == "INS")] == [INS_A]
    assert len(tl_any.rows(timeline_events, timeline_events.c.type == "document")) == 1
    actions = [h["action"] for h in tl_any.rows(identity_history)]
    assert "demographics_updated" not in actions and actions.count("identifier_linked") == 2
    (c,) = tl_any.rows(timeline_conflicts)
    ev = json.loads(c["evidence"])
    assert c["kind"] == "ins_mismatch" and c["held"] and c["status"] == "open"
    assert (c["patient_id"], c["message_id"], c["other_message_id"]) == (pid, 2, 1)
    assert (ev["held_ins"], ev["arriving_ins"]) == (INS_A, INS_B)
    assert ev["held"]["family"] == "PAT-TROIS" and ev["arriving"]["family"] == "NESSI"
    assert ev["arriving"]["birth_date"] == "19770714"
    # a redelivery holds nothing twice
    assert apply_cda(tl_any, other_person(read(*GLY)), 2)["applied"] == 0
    assert len(tl_any.rows(timeline_conflicts)) == 1
    # the operator decides: the events go to the record, the identity stays as it was
    out = tl_any.timeline.resolve_conflict(c["id"], "vigilance", "apply")
    assert out["applied_events"] == 1 and out["status"] == "resolved"
    assert len(tl_any.rows(timeline_events, timeline_events.c.type == "document")) == 2
    assert tl_any.rows(patients)[0]["ins"] == INS_A
    try:
        tl_any.timeline.resolve_conflict(c["id"], "vigilance", "dismiss")
    except ValueError as exc:
        assert "already resolved" in str(exc)
    else:
        raise AssertionError("a resolved conflict was resolved again")


def test_traits_contradicting_a_qualified_identity_are_held(tl_any: TL) -> None:
    from .conftest import edit

    tl_any.apply(read(*ADMISSION), 1)  # PID-32 VALI
    moved = edit(read(*ADMISSION), "PID", 7, "19800101")
    moved = edit(moved, "ZBE", 1, "002^CHU-X^000897406")
    tl_any.apply(moved, 2)
    (c,) = tl_any.rows(timeline_conflicts)
    assert c["kind"] == "demographics_mismatch" and c["held"]
    assert json.loads(c["evidence"])["fields"] == ["birth_date"]
    (p,) = tl_any.rows(patients)
    assert p["birth_date"] == "19790328"
    # case and accents do not make another person
    tl_any.apply(edit(edit(read(*ADMISSION), "PID", 5, "Pat-Trois^Dominique"), "ZBE", 1,
                      "003^CHU-X^000897406"), 3)
    assert len(tl_any.rows(timeline_conflicts)) == 1


def test_document_id_reused_by_another_source_never_moves(tl_any: TL) -> None:
    first = read(*TSH)
    doc_id = b'<id root="1.2.250.1.213.1.1.1.55.2024.9.1"/>'
    other = (other_person(read(*LDL)).replace(b'1.2.3.4.567.8.9.10', b'1.2.3.4.999')
             .replace(b'<id root="1.2.250.1.213.1.1.1.29.2022.1.1"/>', doc_id))
    assert doc_id in other and b"1750803447" in other  # another custodian, same id
    apply_cda(tl_any, first, 1)
    apply_cda(tl_any, other, 2)
    docs = tl_any.rows(documents)
    assert len(docs) == 2 and {d["source"] for d in docs} == {"1120459876", "1750803447"}
    assert len({d["patient_id"] for d in docs}) == 2
    assert all(d["status"] == "active" for d in docs)
    a = tl_any.patient_of(*LOCAL)
    assert [d["type_code"] for d in docs if d["patient_id"] == a] == ["11502-2"]
    # a replacement from the second source naming a document only the first patient has
    apply_cda(tl_any, read(*GLY), 3)
    rplc = other.replace(doc_id, b'<id root="1.2.250.1.213.1.1.1.29.2022.1.2"/>').replace(
        b"<componentOf>", b'<relatedDocument typeCode="RPLC"><parentDocument>'
        b'<id root="1.2.250.1.213.1.1.1.55.2024.7.1"/></parentDocument></relatedDocument>'
        b"<componentOf>", 1)
    assert b"RPLC" in rplc
    apply_cda(tl_any, rplc, 4)
    mine = [d for d in tl_any.rows(documents) if d["patient_id"] == a]
    assert [d["status"] for d in mine] == ["active", "active"]  # untouched
    conflicts = tl_any.rows(timeline_conflicts)
    assert [c["kind"] for c in conflicts] == ["document_replace_other"]
    assert not conflicts[0]["held"] and conflicts[0]["other_patient_id"] == a


def test_ins_withdrawn_by_a47_stops_matching(tl_any: TL) -> None:
    from .conftest import edit

    tl_any.apply(read(*ADMISSION), 1)
    a47 = edit(edit(read(*ADMISSION), "MSH", 9, "ADT^A47^ADT_A30"), "PID", 3,
               '000003^^^CHU-X&000897406&N^PI~""^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10'
               '&ISO^INS')
    a47 = a47.replace(b"PV1|", b"MRG|279035121518989^^^ASIP-SANTE-INS-NIR&"
                      b"1.2.250.1.213.1.4.10&ISO^INS\rPV1|", 1)
    tl_any.apply(a47, 2)
    (p,) = tl_any.rows(patients)
    assert p["ins"] is None
    ids = tl_any.rows(patient_identifiers)
    assert [i["value"] for i in ids] == ["000003"] and all(i["value"] != '""' for i in ids)
    (w,) = [h for h in tl_any.rows(identity_history) if h["action"] == "identifier_withdrawn"]
    assert json.loads(w["detail"])["value"] == INS_A  # kept in history
    # an A08 clearing the birth date with "" clears it (never stores the two characters)
    a08 = edit(edit(read(*ADMISSION), "MSH", 9, "ADT^A08^ADT_A01"), "PID", 7, '""')
    a08 = edit(a08, "PID", 3, "000003^^^CHU-X&000897406&N^PI")
    tl_any.apply(a08.replace(b"ZBE|", b"ZXX|", 1), 3)
    (p,) = tl_any.rows(patients)
    assert p["birth_date"] is None
    # a later arrival carrying only the withdrawn INS no longer lands on the patient
    apply_cda(tl_any, read(*TSH).replace(b'extension="1234567890121"',
                                         b'extension="5550001"'), 4)
    assert len(tl_any.rows(patients)) == 2
