"""The timeline destination's effects: stays, movements, cancels, merges, idempotency."""

from __future__ import annotations

from datetime import UTC, datetime

from engine.timeline.models import (
    applied_events,
    documents,
    identity_history,
    movements,
    observations,
    orders,
    patients,
    stays,
    timeline_events,
)

from .conftest import ANS, DOCS, FHIR, TL, edit, events_of, read

ADMISSION = (*ANS, "SGL", "admission.er7")
DISCHARGE = (*ANS, "SGL", "sortie.er7")


def _stay(tl: TL) -> dict:
    (stay,) = tl.rows(stays)
    return stay


def test_ans_admission_then_discharge(tl_any: TL) -> None:
    tl_any.apply(read(*ADMISSION), 1)
    stay = _stay(tl_any)
    assert stay["status"] == "active" and stay["visit_number"] == "000897406"
    assert stay["medical_ward"] == "Chir V"
    tl_any.apply(read(*DISCHARGE), 2)
    stay = _stay(tl_any)
    assert stay["status"] == "discharged"
    assert stay["discharged_at"].replace(tzinfo=UTC) == datetime(2024, 3, 6, 10, tzinfo=UTC)
    assert [m["trigger"] for m in tl_any.rows(movements)] == ["A01", "A03"]
    # one patient, linked by its local id and its INS
    (p,) = tl_any.rows(patients)
    assert p["ins"] == "279035121518989" and p["identity_status"] == "VALI"
    assert p["dmp_feeding_opposition"] is False and p["dmp_consultation_consent"] is True


def test_replay_changes_nothing(tl_any: TL) -> None:
    raw = read(*ADMISSION)
    env = events_of(raw, 7)
    first = tl_any.timeline.apply(env)
    before = {t.name: len(tl_any.rows(t)) for t in (patients, stays, movements,
                                                    timeline_events, identity_history)}
    again = tl_any.timeline.apply(env)
    after = {t.name: len(tl_any.rows(t)) for t in (patients, stays, movements,
                                                   timeline_events, identity_history)}
    assert first["applied"] == 2 and again == {"applied": 0, "skipped": 2}
    assert before == after
    assert len(tl_any.rows(applied_events)) == 2


def test_fhir_adt_flow_and_cancellations(tl: TL) -> None:
    # The FHIR-Converter samples share patient, visit 40007716 and EVN-6; they differ by trigger.
    for i, name in enumerate(("ADT-A01-01", "ADT-A02-01", "ADT-A03-01"), start=1):
        tl.apply(read(*FHIR, f"{name}.hl7"), i)
    stay = _stay(tl)
    assert stay["status"] == "discharged" and stay["visit_number"] == "40007716"
    assert stay["location"] == "HUH AE OMU/OMU B/Bed 03"
    tl.apply(read(*FHIR, "ADT-A13-01.hl7"), 4)  # cancel discharge
    assert _stay(tl)["status"] == "active"
    assert {m["trigger"]: m["status"] for m in tl.rows(movements)}["A03"] == "cancelled"
    tl.apply(read(*FHIR, "ADT-A11-01.hl7"), 5)  # cancel admission
    assert _stay(tl)["status"] == "unknown_start"  # the transfer remains, its admission not
    by_trigger = {m["trigger"]: m["status"] for m in tl.rows(movements)}
    assert by_trigger == {"A01": "cancelled", "A02": "active", "A03": "cancelled"}


def test_cancel_before_admission_without_zbe(tl: TL) -> None:
    tl.apply(read(*FHIR, "ADT-A11-01.hl7"), 1)
    tl.apply(read(*FHIR, "ADT-A01-01.hl7"), 2)
    statuses = sorted(m["status"] for m in tl.rows(movements))
    assert statuses == ["cancelled", "used"]
    assert _stay(tl)["status"] == "cancelled"


def test_zbe_update_and_cancel(tl_any: TL) -> None:
    raw = read(*ADMISSION)
    tl_any.apply(raw, 1)
    upd = edit(edit(edit(edit(raw, "MSH", 9, "ADT^Z99^ADT_A01"), "ZBE", 4, "UPDATE"),
                    "ZBE", 6, "A01"), "ZBE", 7, "Cardio^^^^^^UF^^^6300")
    tl_any.apply(upd, 2)
    (mv,) = tl_any.rows(movements)
    assert mv["trigger"] == "A01" and mv["medical_ward"] == "Cardio"
    cancel = edit(edit(edit(raw, "MSH", 9, "ADT^A11^ADT_A09"), "ZBE", 4, "CANCEL"), "ZBE", 6,
                  "A01")
    tl_any.apply(cancel, 3)
    (mv,) = tl_any.rows(movements)
    assert mv["status"] == "cancelled"
    assert _stay(tl_any)["status"] == "cancelled"
    ev = tl_any.rows(timeline_events, timeline_events.c.type == "stay")[0]
    assert ev["status"] == "cancelled"


def test_zbe_cancel_arriving_first(tl: TL) -> None:
    raw = read(*ADMISSION)
    cancel = edit(edit(edit(raw, "MSH", 9, "ADT^A11^ADT_A09"), "ZBE", 4, "CANCEL"), "ZBE", 6,
                  "A01")
    tl.apply(cancel, 1)
    tl.apply(raw, 2)
    (mv,) = tl.rows(movements)
    assert mv["status"] == "cancelled" and mv["last_message_id"] == 2
    assert _stay(tl)["status"] == "cancelled"


def test_same_ins_two_facilities_one_patient(tl: TL) -> None:
    raw = read(*ADMISSION)
    tl.apply(raw, 1)
    other = edit(edit(raw, "MSH", 4, "CHU-Y"),
                 "PID", 3, "777^^^CHU-Y&999&N^PI~279035121518989^^^ASIP-SANTE-INS-NIR"
                 "&1.2.250.1.213.1.4.10&ISO^INS")
    tl.apply(edit(other, "ZBE", 1, "001^CHU-Y^999"), 2)
    assert len(tl.rows(patients)) == 1
    assert tl.patient_of("999", "777") == tl.patient_of("000897406", "000003")
    assert len(tl.rows(stays)) == 2


def test_provisional_identity_does_not_link_by_ins(tl: TL) -> None:
    raw = read(*ADMISSION)
    tl.apply(raw, 1)
    other = edit(edit(raw, "MSH", 4, "CHU-Y"),
                 "PID", 3, "777^^^CHU-Y&999&N^PI~279035121518989^^^ASIP-SANTE-INS-NIR"
                 "&1.2.250.1.213.1.4.10&ISO^INS")
    tl.apply(edit(edit(other, "PID", 32, "PROV"), "ZBE", 1, "001^CHU-Y^999"), 2)
    assert len(tl.rows(patients)) == 2


def test_a40_merge_moves_everything(tl_any: TL) -> None:
    absorbed_order = edit(read(*FHIR, "ORM-O01-01.hl7"), "PID", 3, "56789^^^BCBS^MR")
    tl_any.apply(absorbed_order, 1)
    survivor_adt = edit(read(*FHIR, "ADT-A01-01.hl7"), "PID", 3, "12345^^^BCBS^MR")
    tl_any.apply(survivor_adt, 2)
    old, new = tl_any.patient_of("BCBS", "56789"), tl_any.patient_of("BCBS", "12345")
    assert old != new
    tl_any.apply(read(*FHIR, "ADT-A40-01.hl7"), 3)
    assert tl_any.patient_of("BCBS", "56789") == new
    absorbed = tl_any.rows(patients, patients.c.id == old)[0]
    assert absorbed["merged_into"] == new
    assert {e["patient_id"] for e in tl_any.rows(timeline_events)} == {new}
    actions = {h["action"] for h in tl_any.rows(identity_history)}
    assert {"merge_absorbed", "merge_survivor"} <= actions


def test_a47_changes_the_identifier(tl: TL) -> None:
    tl.apply(edit(read(*FHIR, "ADT-A01-01.hl7"), "PID", 3, "MR102^^^BCBS^MR"), 1)
    pid = tl.patient_of("BCBS", "MR102")
    tl.apply(edit(read(*FHIR, "ADT-A47-01.hl7"), "PID", 3, "MR101^^^BCBS^MR"), 2)
    assert tl.patient_of("BCBS", "MR101") == pid
    assert len(tl.rows(patients)) == 1
    assert "identifier_changed" in {h["action"] for h in tl.rows(identity_history)}


def _order(prescriber: str, when: str, placer: str) -> bytes:
    raw = read(*FHIR, "ORM-O01-01.hl7")
    raw = edit(raw, "ORC", 2, f"{placer}^GHHPlacer")
    raw = edit(raw, "ORC", 9, when)
    return edit(raw, "ORC", 12, f"{prescriber}^DOC^A")


def test_redundant_orders(tl_any: TL) -> None:
    tl_any.apply(_order("3850", "20240301100000", "A1"), 1)
    tl_any.apply(_order("3850", "20240302100000", "A2"), 2)   # same prescriber: fine
    tl_any.apply(_order("4000", "20240305100000", "A3"), 3)   # another one, 4 days: redundant
    tl_any.apply(_order("4100", "20240320100000", "A4"), 4)   # outside the 7-day window
    by_key = {o["key"].split("|")[1]: o for o in tl_any.rows(orders)}
    assert by_key["A1"]["redundant_of"] is None and by_key["A2"]["redundant_of"] is None
    assert by_key["A3"]["redundant_of"] in (by_key["A1"]["id"], by_key["A2"]["id"])
    assert by_key["A4"]["redundant_of"] is None
    ev = tl_any.rows(timeline_events, timeline_events.c.id == by_key["A3"]["event_id"])[0]
    assert ev["redundant_of"] is not None


def test_redundant_order_arriving_out_of_order(tl: TL) -> None:
    tl.apply(_order("4000", "20240305100000", "B2"), 1)
    tl.apply(_order("3850", "20240301100000", "B1"), 2)  # the earlier one arrives later
    by_key = {o["key"].split("|")[1]: o for o in tl.rows(orders)}
    assert by_key["B2"]["redundant_of"] == by_key["B1"]["id"]
    assert by_key["B1"]["redundant_of"] is None


def test_mdm_document_chain(tl_any: TL) -> None:
    base = (*DOCS, "MDM")
    tl_any.apply(read(*base, "Transmission_initiale_MDM",
                      "message_MDM_CR_Radio_INIT_N1_Base64.er7"), 1)
    tl_any.apply(read(*base, "Remplacement_MDM", "message_MDM_CR_Radio_RPLC_N1.er7"), 2)
    status = {d["document_id"][-3:]: d["status"] for d in tl_any.rows(documents)}
    assert status == {"081": "replaced", "082": "active"}
    tl_any.apply(read(*base, "Suppression_MDM", "message_MDM_CR_Radio_DEL_N1.er7"), 3)
    status = {d["document_id"][-3:]: d["status"] for d in tl_any.rows(documents)}
    assert status == {"081": "replaced", "082": "deleted"}
    doc = tl_any.rows(documents, documents.c.document_id.like("%081"))[0]
    assert doc["invisible_patient"] is True and doc["masked_ps"] is False
    assert bytes(doc["content"]).startswith(b"<ClinicalDocument")


def test_oru_document_with_cda(tl: TL) -> None:
    raw = read(*DOCS, "ORU", "Transmission_initiale_ORU", "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7")
    env = tl.apply(raw, 1)
    (doc,) = tl.rows(documents)
    assert doc["type_code"] == "11502-2" and doc["confidentiality"] == "N"
    assert doc["status"] == "active"
    import base64

    assert bytes(doc["content"]) == base64.b64decode(env["events"][0]["content_b64"])


def test_result_correction_and_deletion(tl: TL) -> None:
    raw = read(*FHIR, "LAB-ORU-1.hl7")
    tl.apply(raw, 1)
    live = [o for o in tl.rows(observations) if o["loinc"] == "26450-7"]
    assert len(live) == 1 and live[0]["value"] == "2" and live[0]["original_value"] == "2"
    text = raw.decode("utf-8")
    sep = "\r" if "\r" in text else "\n"
    lines = text.split(sep)
    for i, line in enumerate(lines):
        if line.startswith("OBX|") and "26450-7" in line or (
                line.startswith("OBX|") and "|2|%|" in line):
            f = line.split("|")
            f[5], f[11] = "3", "C"
            lines[i] = "|".join(f)
    tl.apply(sep.join(lines).encode(), 2)
    live = [o for o in tl.rows(observations) if o["loinc"] == "26450-7"]
    assert len(live) == 1 and live[0]["value"] == "3" and live[0]["status"] == "C"
    for i, line in enumerate(lines):
        if line.startswith("OBX|") and "|3|%|" in line:
            f = line.split("|")
            f[11] = "D"
            lines[i] = "|".join(f)
    tl.apply(sep.join(lines).encode(), 3)
    gone = [o for o in tl.rows(observations) if o["original_value"] in ("2", "3")
            and o["key"] == live[0]["key"]]
    assert gone and all(o["deleted"] for o in gone)


def test_newer_generation_without_an_observation_withdraws_it(tl_any: TL) -> None:
    """Issue #15: a replay that no longer carries an OBX leaves no stale observation."""
    raw = read(*FHIR, "LAB-ORU-1.hl7")
    env = events_of(raw, 5)
    tl_any.timeline.apply(env, 0)
    keys = {o["key"] for o in tl_any.rows(observations) if not o["deleted"]}
    assert len(keys) > 1
    results = [e for e in env["events"] if e["type"] == "result" and e["observations"]]
    dropped = results[0]["observations"].pop()
    again = tl_any.timeline.apply(env, 1)
    assert again["applied"] >= 1
    live = {o["key"] for o in tl_any.rows(observations) if not o["deleted"]}
    assert live == keys - {dropped["key"]}
    assert tl_any.timeline.apply(env, 1) == {"applied": 0, "skipped": len(env["events"])}


def test_concurrent_messages_of_one_person_make_one_patient(tl_any: TL) -> None:
    """An ADT (local id + INS) and an ORU (INS only) sit in different partitions and may be
    applied at the same moment: they must still end on one patient."""
    import threading

    adt = read(*ADMISSION)
    oru = read(*DOCS, "ORU", "Transmission_initiale_ORU", "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7")
    for n in range(6):
        ins = f"27903512151{n:04d}"
        envs = [
            events_of(edit(edit(adt, "PID", 3, f"L{n}^^^CHU-X&000897406&N^PI~{ins}^^^"
                                "ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"),
                           "ZBE", 1, f"R{n}^CHU-X^000897406"), 100 + 2 * n),
            events_of(edit(oru, "PID", 3, f"{ins}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10"
                           "&ISO^INS"), 101 + 2 * n),
        ]
        envs[1]["events"][0]["key"] = envs[1]["events"][0]["header"]["document_id"] = f"d{n}"
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(env: dict, barrier: threading.Barrier = barrier,
                errors: list[BaseException] = errors) -> None:
            barrier.wait()
            for _ in range(20):  # what the delivery runner does: retry on a store conflict
                try:
                    tl_any.timeline.apply(env)
                    return
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
            raise AssertionError(errors)

        threads = [threading.Thread(target=run, args=(e,)) for e in envs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert tl_any.patient_of("000897406", f"L{n}") == tl_any.patient_of(
            "1.2.250.1.213.1.4.10", ins)


CONSENT = (*ANS, "Vague_2", "Consentement_DMP_PAMFR",
           "ConsentementConsultation_NonOppositionAlimentation.er7")


def _circle(tl: TL) -> dict[str, str]:
    from engine.timeline.models import care_circle

    return {r["professional_id"]: r["role"] for r in tl.rows(care_circle)}


def test_rol_names_the_care_team(tl_any: TL) -> None:
    """PAM-FR ROL|…|ODRP (the médecin traitant, RPPS in ROL-4): in the care circle."""
    tl_any.apply(read(*CONSENT), 1)
    assert _circle(tl_any).get("10000023084") == "rol:ODRP"


def test_rol_deleted_names_nobody(tl: TL) -> None:
    tl.apply(edit(read(*CONSENT), "ROL", 2, "DE"), 1)  # HL7 table 0287: DE = delete
    assert "10000023084" not in _circle(tl)


def test_pending_movements_and_their_cancels(tl: TL) -> None:
    """A14/A16 (pending admission/discharge) then A27/A25 cancel them (HL7 v2.5.1 §3.3.27,
    §3.3.25); the FHIR-Converter samples share visit and EVN times."""
    tl.apply(read(*FHIR, "ADT-A14-01.hl7"), 1)
    tl.apply(read(*FHIR, "ADT-A16-01.hl7"), 2)
    assert {m["trigger"]: m["status"] for m in tl.rows(movements)} == {
        "A14": "active", "A16": "active"}
    tl.apply(read(*FHIR, "ADT-A27-01.hl7"), 3)
    tl.apply(read(*FHIR, "ADT-A25-01.hl7"), 4)
    assert {m["trigger"]: m["status"] for m in tl.rows(movements)} == {
        "A14": "cancelled", "A16": "cancelled"}
    titles = {e["title"] for e in tl.rows(timeline_events, timeline_events.c.type == "movement")}
    assert {"Pending admission", "Pending discharge"} <= titles
    # ROL|…|PP (primary care provider) of these samples joins the circle too.
    assert _circle(tl).get("12377H87") == "rol:PP"


def test_change_of_attending_doctor(tl: TL) -> None:
    """A54 names the new attending doctor (PV1-7): a movement and a care-circle member; A55
    cancels the movement (HL7 v2.5.1 §3.3.54–3.3.55)."""
    raw = read(*FHIR, "ADT-A02-01.hl7")
    a54 = edit(edit(raw, "MSH", 9, "ADT^A54^ADT_A54"), "PV1", 7, "999001^NOUVEAU^Anne")
    tl.apply(a54, 1)
    (mv,) = [m for m in tl.rows(movements) if m["trigger"] == "A54"]
    assert mv["status"] == "active"
    assert _circle(tl).get("999001") == "attending"
    tl.apply(edit(a54, "MSH", 9, "ADT^A55^ADT_A52"), 2)
    (mv,) = [m for m in tl.rows(movements) if m["trigger"] == "A54"]
    assert mv["status"] == "cancelled"
