"""The normalisation transformer end to end, on the three demo laboratories' messages."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from loinc.catalogue import Catalogue
from mappings.loader import MappingSet
from transformers.normalise import (
    NormalisedObservation,
    RawObservation,
    normalise_observations,
    observations_from_oru,
)

from .conftest import CORPUS, DATA

LABS = ("labo-bio-paris15", "cerballiance-idf-demo", "biogroup-val-de-marne-demo")


def _normalise(path: Path, catalogue: Catalogue, mappings: MappingSet) -> tuple[str, list]:
    sender, observations = observations_from_oru(path.read_text(encoding="utf-8"))
    result = normalise_observations(
        observations, sender=sender, catalogue=catalogue, mappings=mappings
    )
    return sender, result


def _one(obx: RawObservation, catalogue: Catalogue, mappings: MappingSet, sender: str = "X"):
    return normalise_observations([obx], sender=sender, catalogue=catalogue, mappings=mappings)


def test_three_labs_glucose_is_one_series_in_mmol_per_litre(
    catalogue: Catalogue, mappings: MappingSet
) -> None:
    series: list[tuple[str, NormalisedObservation]] = []
    for lab in LABS:
        sender, result = _normalise(DATA / f"oru_{lab}_full.hl7", catalogue, mappings)
        glucose = [o for o in result.observations if o.analyte == ("Glucose", "Ser/Plas")]
        assert len(glucose) == 1
        series.append((sender, glucose[0]))
    assert {o.loinc for _, o in series} == {"14749-6"}  # moles code: property follows unit
    assert {o.unit for _, o in series} == {"mmol/L"}
    assert {o.value for _, o in series} == {Decimal("5.83")}
    originals = {(s, o.original.code, o.original.value, o.original.unit) for s, o in series}
    assert originals == {
        ("LABO-BIO-PARIS15", "GLY", "1,05", "g/L"),
        ("CERBALLIANCE-IDF-DEMO", "GLU", "5.83", "mmol/L"),
        ("BIOGROUP-VAL-DE-MARNE-DEMO", "GLYC", "105", "mg/dL"),
    }
    assert all(o.performing_lab == s for s, o in series)


def test_all_forty_tests_of_the_three_labs_agree(
    catalogue: Catalogue, mappings: MappingSet
) -> None:
    by_lab = {}
    for lab in LABS:
        _sender, result = _normalise(DATA / f"oru_{lab}_full.hl7", catalogue, mappings)
        normalised = [o for o in result.observations if o.outcome == "normalised"]
        assert len(normalised) == 40
        by_lab[lab] = {o.analyte: (o.loinc, o.unit, o.value) for o in normalised}
    reference = by_lab[LABS[0]]
    for lab in LABS[1:]:
        assert by_lab[lab].keys() == reference.keys()
        for analyte, (loinc, unit, value) in by_lab[lab].items():
            ref_loinc, ref_unit, ref_value = reference[analyte]
            assert (loinc, unit) == (ref_loinc, ref_unit), analyte
            # same sample, different precisions: agree within 1 %
            assert abs(value - ref_value) <= abs(ref_value) * Decimal("0.01"), analyte


def test_unmapped_code_is_kept_and_lands_in_the_backlog(
    catalogue: Catalogue, mappings: MappingSet
) -> None:
    sender, result = _normalise(DATA / "oru_labo-bio-paris15_full.hl7", catalogue, mappings)
    kept = result.unmapped
    assert [(o.original.code, o.reason, o.value_text, o.unit) for o in kept] == [
        ("VITD", "unmapped_code", "28,5", "ng/mL")
    ]
    assert len(result.backlog) == 1
    entry = result.backlog[0]
    assert (entry.sender, entry.code, entry.coding_system, entry.text, entry.unit) == (
        sender,
        "VITD",
        "L",
        "Vitamine D (25-OH)",
        "ng/mL",
    )
    assert entry.example_value == "28,5"


def test_every_observation_comes_out_once_in_order(
    catalogue: Catalogue, mappings: MappingSet
) -> None:
    _sender, observations = observations_from_oru(
        (DATA / "oru_cerballiance-idf-demo_full.hl7").read_text()
    )
    result = normalise_observations(
        observations, sender="NOBODY", catalogue=catalogue, mappings=mappings
    )
    assert [o.set_id for o in result.observations] == [o.set_id for o in observations]
    assert all(o.reason == "unmapped_code" for o in result.observations)
    assert len(result.backlog) == len(observations)


def test_loinc_code_with_the_other_property_is_recoded(
    catalogue: Catalogue, mappings: MappingSet
) -> None:
    obx = RawObservation(
        set_id="1", value_type="NM", code="2345-7", coding_system="LN", value="5.5", units="mmol/L"
    )
    result = _one(obx, catalogue, mappings)
    (o,) = result.observations
    assert (o.loinc, o.value, o.unit) == ("14749-6", Decimal("5.5"), "mmol/L")
    assert "recoded_to_unit_property" in o.notes
    assert o.original.code == "2345-7"


def test_urea_and_urea_nitrogen_stay_distinct(catalogue: Catalogue, mappings: MappingSet) -> None:
    urea = RawObservation(
        value_type="NM", code="3091-6", coding_system="LN", value="0.30", units="g/L"
    )
    bun = RawObservation(
        value_type="NM", code="3094-0", coding_system="LN", value="14", units="mg/dL"
    )
    result = normalise_observations([urea, bun], sender="X", catalogue=catalogue, mappings=mappings)
    first, second = result.observations
    assert (first.loinc, first.unit) == ("22664-7", "mmol/L")
    assert (second.loinc, second.unit, second.value) == ("3094-0", "mg/dL", Decimal("14"))


@pytest.mark.parametrize(
    ("units", "reason"),
    [("g/L", "unit_incompatible_with_loinc"), ("bananas", "unknown_unit"), ("", "missing_unit")],
)
def test_unconvertible_values_are_kept_with_a_reason(
    catalogue: Catalogue, mappings: MappingSet, units: str, reason: str
) -> None:
    # a cell count in a mass unit (g/L read as such only for mass codes), nonsense, nothing
    obx = RawObservation(
        value_type="NM", code="777-3", coding_system="LN", value="250", units=units
    )
    if units == "g/L":
        obx = RawObservation(
            value_type="NM", code="6690-2", coding_system="LN", value="7", units="mg/L"
        )
    result = _one(obx, catalogue, mappings)
    (o,) = result.observations
    assert (o.outcome, o.reason, o.value) == ("as_received", reason, None)
    assert o.value_text == obx.value and o.unit == obx.units
    assert [b.reason for b in result.backlog] == [reason]


@pytest.mark.parametrize(
    ("status", "outcome", "action"),
    [
        ("F", "normalised", "add"),
        ("P", "normalised", "add"),
        ("C", "normalised", "correct"),
        ("X", "no_value", "none"),
        ("D", "no_value", "delete"),
    ],
)
def test_result_status_is_respected(
    catalogue: Catalogue, mappings: MappingSet, status: str, outcome: str, action: str
) -> None:
    obx = RawObservation(
        value_type="NM",
        code="GLY",
        coding_system="L",
        value="1,05" if status not in "XD" else "",
        units="g/L",
        result_status=status,
    )
    (o,) = _one(obx, catalogue, mappings, sender="LABO-BIO-PARIS15").observations
    assert (o.outcome, o.action, o.status, o.loinc) == (
        outcome,
        action,
        status,
        "14749-6" if outcome == "normalised" else "2345-7",
    )


def test_sn_and_ranges_are_converted_and_flag_derived(
    catalogue: Catalogue, mappings: MappingSet
) -> None:
    obx = RawObservation(
        value_type="SN",
        code="1988-5",
        coding_system="LN",
        value="<^0.5",
        units="mg/dL",
        reference_range="<0,5",
    )
    (o,) = _one(obx, catalogue, mappings).observations
    assert (o.comparator, o.value, o.unit, o.value_text) == ("<", Decimal("5.00"), "mg/L", "<5.00")
    assert o.reference_high == Decimal("5.00") and o.reference_low is None
    assert (o.abnormal_flag, o.abnormal_flag_source) == ("N", "derived")


@pytest.mark.parametrize(
    ("value", "flags", "expected", "source"),
    [("1,35", "", "H", "derived"), ("0,50", "", "L", "derived"), ("1,35", "HH", "HH", "received")],
)
def test_abnormal_flag_kept_or_derived(
    catalogue: Catalogue, mappings: MappingSet, value: str, flags: str, expected: str, source: str
) -> None:
    obx = RawObservation(
        value_type="NM",
        code="GLY",
        coding_system="L",
        value=value,
        units="g/L",
        reference_range="0,70-1,10",
        abnormal_flags=flags,
    )
    (o,) = _one(obx, catalogue, mappings, sender="LABO-BIO-PARIS15").observations
    assert (o.abnormal_flag, o.abnormal_flag_source) == (expected, source)
    assert (o.reference_low, o.reference_high) == (Decimal("3.89"), Decimal("6.11"))


def test_text_results_are_left_as_sent(catalogue: Catalogue, mappings: MappingSet) -> None:
    obx = RawObservation(value_type="CE", code="5196-1", coding_system="LN", value="NEG^Négatif^L")
    (o,) = _one(obx, catalogue, mappings).observations
    assert (o.outcome, o.loinc, o.value_text, o.value) == ("coded", "5196-1", "NEG^Négatif^L", None)


def test_er7_separators_and_escapes() -> None:
    text = (
        "MSH|^~\\&|SIL|LAB\\T\\X^1.2.3^ISO|PARCOURS||20250101||ORU^R01|1|P|2.5.1\r\n"
        "OBX|1|NM|GLY^Glyc\\S\\mie \\F\\ jeun^L||1,05|g/L^^UCUM|0,70-1,10|H|||F|||20250101"
        "|||||||||Labo \\E\\15\nOBX|2|SN|CRP^CRP^L||<^0.5|mg/L\r"
    )
    sender, observations = observations_from_oru(text)
    assert sender == "LAB&X"
    first, second = observations
    assert (first.text, first.value, first.units, first.reference_range) == (
        "Glyc^mie | jeun",
        "1,05",
        "g/L",
        "0,70-1,10",
    )
    assert (first.abnormal_flags, first.result_status, first.performing_lab) == (
        "H",
        "F",
        "Labo \\15",
    )
    assert (second.value_type, second.value) == ("SN", "<^0.5")


def _crbio_glucose(path: Path) -> list[RawObservation]:
    """Glucose observations of an ANS CR-BIO example, as OBX-like plain data."""
    ns = {"h": "urn:hl7-org:v3", "xsi": "http://www.w3.org/2001/XMLSchema-instance"}
    tree = etree.parse(str(path))
    found = []
    for obs in tree.iter("{urn:hl7-org:v3}observation"):
        code = obs.find("h:code", ns)
        value = obs.find("h:value", ns)
        if code is None or value is None or value.get("unit") is None:
            continue
        if "Glucose" not in (code.get("displayName") or ""):
            continue
        low = obs.find("h:referenceRange/h:observationRange/h:value/h:low", ns)
        high = obs.find("h:referenceRange/h:observationRange/h:value/h:high", ns)
        ranges = (
            f"{low.get('value')}-{high.get('value')}"
            if low is not None and high is not None
            else ""
        )
        found.append(
            RawObservation(
                value_type="NM",
                code=code.get("code", ""),
                coding_system="LN",
                value=value.get("value", ""),
                units=value.get("unit", ""),
                reference_range=ranges,
            )
        )
    return found


def test_ans_crbio_glucose_in_both_units_gives_the_same_canonical_value(
    catalogue: Catalogue, mappings: MappingSet
) -> None:
    folder = CORPUS / "cda" / "ans-examples"
    both = folder / "BIO-CR-BIO_2024.01_Glycemie_deux_unites_principales_mole_masse.xml"
    mole = folder / "BIO-CR-BIO_2024.01_Glycemie_mole.xml"
    if not both.exists():
        pytest.skip(f"ANS corpus not found at {folder}")
    observations = _crbio_glucose(both) + _crbio_glucose(mole)
    assert {(o.code, o.units) for o in observations} >= {("40193-5", "mmol/L"), ("53049-3", "g/L")}
    result = normalise_observations(
        observations, sender="ANS", catalogue=catalogue, mappings=mappings
    )
    assert {o.loinc for o in result.observations} == {"40193-5"}
    assert {o.unit for o in result.observations} == {"mmol/L"}
    values = [o.value for o in result.observations]
    # 0.88 g/L has two significant figures: ±0.005 g/L is ±0.028 mmol/L
    assert max(values) - min(values) <= Decimal("0.028")  # type: ignore[operator]


def test_valid_loinc_outside_the_catalogue_is_kept_not_backlogged(
    catalogue: Catalogue, mappings: MappingSet
) -> None:
    """Issue #15: 94558-4 (SARS-CoV-2 Ag, OBX-3 coded LN, check digit right) is not in the
    subset: kept as LOINC, value as sent, noted; no backlog entry (nothing to map)."""
    obx = RawObservation(set_id="1", value_type="CWE", code="94558-4",
                         text="SARS-CoV-2 Ag Resp Ql IA.rapid", coding_system="LN",
                         value="260385009^Negative^SCT", result_status="F")
    result = _one(obx, catalogue, mappings)
    [out] = result.observations
    assert (out.loinc, out.outcome, out.reason) == ("94558-4", "as_received",
                                                    "loinc_not_in_catalogue")
    assert out.notes == ("not_in_catalogue",) and out.value_text == obx.value
    assert result.backlog == []
    # a wrong check digit is no LOINC code: to the backlog, said so
    bad = _one(RawObservation(set_id="1", value_type="NM", code="94558-5", coding_system="LN",
                              value="1", units="1", result_status="F"), catalogue, mappings)
    assert bad.observations[0].loinc is None
    assert [b.reason for b in bad.backlog] == ["invalid_loinc_code"]
