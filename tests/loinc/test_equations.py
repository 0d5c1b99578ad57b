"""Conversions that are not a ratio of units (issue #15, "Wrong or stale values").

HbA1c IFCC (mmol/mol) and NGSP/DCCT (%) are related by the IFCC–NGSP master equation
(NGSP = 0.09148 × IFCC + 2.152, ngsp.org), not by the factor 1/10 the units alone suggest; a
temperature scale has an offset zero. Each is declared in loinc/data/equations.csv or refused.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from loinc.canonical import EquationError, load_equations
from loinc.catalogue import Catalogue, LoincTerm
from loinc.units import UnitError, conversion_factor, family
from mappings.loader import MappingSet
from transformers.normalise import RawObservation, normalise_observations


def _hba1c(value: str, unit: str, code: str = "59261-8", rng: str = "", flag: str = "",
           value_type: str = "NM") -> RawObservation:
    return RawObservation(set_id="1", value_type=value_type, code=code, text="HbA1c",
                          coding_system="LN", value=value, units=unit, reference_range=rng,
                          abnormal_flags=flag, result_status="F")


def _one(obx: RawObservation, catalogue: Catalogue, mappings: MappingSet) -> object:
    result = normalise_observations([obx], sender="LAB", catalogue=catalogue, mappings=mappings)
    [out] = result.observations
    return out


def test_ifcc_48_mmol_per_mol_is_ngsp_6_5_percent_under_4548_4(
        catalogue: Catalogue, mappings: MappingSet) -> None:
    out = _one(_hba1c("48", "mmol/mol", rng="20-42"), catalogue, mappings)
    assert out.outcome == "normalised"
    assert (out.loinc, out.unit) == ("4548-4", "%")
    assert out.value == Decimal("6.54")  # the diagnostic threshold, not "4.80 %"
    assert (out.reference_low, out.reference_high) == (Decimal("3.98"), Decimal("5.99"))
    assert out.abnormal_flag == "H" and out.abnormal_flag_source == "derived"
    assert "converted_by_declared_equation" in out.notes
    assert (out.original.code, out.original.value, out.original.unit) == (
        "59261-8", "48", "mmol/mol")


def test_a_normal_ifcc_value_stays_normal(catalogue: Catalogue, mappings: MappingSet) -> None:
    out = _one(_hba1c("36", "mmol/mol", rng="20-42"), catalogue, mappings)
    assert out.value == Decimal("5.45") and out.abnormal_flag == "N"
    low = _one(_hba1c("<20", "mmol/mol", rng="20-42"), catalogue, mappings)
    assert low.comparator == "<" and low.value == Decimal("3.98") and low.abnormal_flag == "L"


def test_a_received_flag_is_kept(catalogue: Catalogue, mappings: MappingSet) -> None:
    out = _one(_hba1c("48", "mmol/mol", rng="20-42", flag="H"), catalogue, mappings)
    assert out.abnormal_flag == "H" and out.abnormal_flag_source == "received"


def test_percent_sent_under_the_ifcc_code_moves_to_the_ngsp_code(
        catalogue: Catalogue, mappings: MappingSet) -> None:
    out = _one(_hba1c("6.5", "%", rng="4.0-6.0"), catalogue, mappings)
    assert (out.loinc, out.unit, out.value) == ("4548-4", "%", Decimal("6.5"))
    assert (out.reference_low, out.reference_high) == (Decimal("4.0"), Decimal("6.0"))
    assert "recoded_to_unit_property" in out.notes and out.original.code == "59261-8"


def test_mmol_per_mol_under_an_ngsp_code_goes_through_the_equation(
        catalogue: Catalogue, mappings: MappingSet) -> None:
    for code in ("4548-4", "17856-6"):
        out = _one(_hba1c("48", "mmol/mol", code=code), catalogue, mappings)
        assert (out.unit, out.value) == ("%", Decimal("6.54")), code
        assert out.loinc in ("4548-4", "17856-6")


def test_ngsp_percent_is_untouched(catalogue: Catalogue, mappings: MappingSet) -> None:
    out = _one(_hba1c("6,5", "%", code="4548-4"), catalogue, mappings)
    assert (out.loinc, out.value, out.notes) == ("4548-4", Decimal("6.5"), ())


def test_ifcc_and_ngsp_results_are_one_series(catalogue: Catalogue,
                                              mappings: MappingSet) -> None:
    a = _one(_hba1c("48", "mmol/mol"), catalogue, mappings)
    b = _one(_hba1c("6.5", "%", code="4548-4"), catalogue, mappings)
    assert (a.loinc, a.unit, a.analyte) == (b.loinc, b.unit, b.analyte)
    assert abs(a.value - b.value) < Decimal("0.1")


def test_temperatures_are_not_converted_by_a_factor() -> None:
    assert family("Cel") == family("[degF]") == "temperature"
    with pytest.raises(UnitError) as caught:
        conversion_factor("Cel", "[degF]")
    assert caught.value.reason == "no_declared_conversion"
    with pytest.raises(UnitError):
        conversion_factor("K", "Cel")
    assert conversion_factor("Cel", "Cel") == 1


def test_a_temperature_term_converts_through_the_declared_offset(mappings: MappingSet) -> None:
    body = LoincTerm("8310-5", "Body temperature", "Temp", "Pt", "^Patient", "Qn", "",
                     "Body temperature", example_ucum_unit="Cel")
    catalogue = Catalogue([body])
    out = _one(RawObservation(set_id="1", value_type="NM", code="8310-5", coding_system="LN",
                              value="98.6", units="[degF]", result_status="F"),
               catalogue, mappings)
    assert (out.unit, out.value) == ("Cel", Decimal("37.0"))


def test_a_true_fraction_converts_by_its_ratio(mappings: MappingSet) -> None:
    """Same code, same property (a substance fraction in mmol/mol and in %): a ratio."""
    from loinc.canonical import CanonicalPolicy

    sfr = LoincTerm("1-8", "Thing", "SFr", "Pt", "Bld", "Qn", "", "Thing SFr",
                    example_ucum_unit="mmol/mol")
    catalogue = Catalogue([sfr])
    policy = CanonicalPolicy(catalogue, units={("Thing", "Bld"): "%"}, equations=[])
    result = normalise_observations(
        [RawObservation(set_id="1", value_type="NM", code="1-8", coding_system="LN",
                        value="970", units="mmol/mol", result_status="F")],
        sender="LAB", catalogue=catalogue, mappings=mappings, policy=policy)
    assert (result.observations[0].unit, result.observations[0].value) == ("%", Decimal("97.0"))


def test_no_factor_across_properties_without_an_equation(mappings: MappingSet) -> None:
    """A target of another property (substance → mass fraction) with no declared equation is
    refused, kept as received: the ratio of the units would be a wrong value."""
    from loinc.canonical import CanonicalPolicy, Target

    sfr = LoincTerm("1-8", "Thing", "SFr", "Pt", "Bld", "Qn", "", "Thing SFr",
                    example_ucum_unit="mmol/mol")
    mfr = LoincTerm("2-6", "Thing", "MFr", "Pt", "Bld", "Qn", "", "Thing MFr",
                    example_ucum_unit="%")
    catalogue = Catalogue([sfr, mfr])

    class OtherProperty(CanonicalPolicy):
        def target(self, term: LoincTerm) -> Target | None:
            return Target(mfr, "%")

    policy = OtherProperty(catalogue, equations=[])
    result = normalise_observations(
        [RawObservation(set_id="1", value_type="NM", code="1-8", coding_system="LN",
                        value="48", units="mmol/mol", result_status="F")],
        sender="LAB", catalogue=catalogue, mappings=mappings, policy=policy)
    [out] = result.observations
    assert (out.outcome, out.reason, out.value_text) == (
        "as_received", "no_declared_conversion", "48")
    assert result.backlog[0].reason == "no_declared_conversion"


def test_equations_file_refuses_a_decreasing_equation(tmp_path: Path) -> None:
    bad = tmp_path / "eq.csv"
    bad.write_text("component,system,from_code,from_unit,to_code,to_unit,slope,intercept,"
                   "source\nX,Bld,,a,,b,-1,0,test\n")
    with pytest.raises(EquationError):
        load_equations(bad)
    bad.write_text("component,system,from_code,from_unit,to_code,to_unit,slope,intercept,"
                   "source\nX,Bld,,a,,b,one,0,test\n")
    with pytest.raises(EquationError):
        load_equations(bad)


def test_enzyme_units_written_in_ucum_iu_read_as_u_per_litre(
        catalogue: Catalogue, mappings: MappingSet) -> None:
    out = _one(RawObservation(set_id="1", value_type="NM", code="1920-8", coding_system="LN",
                              value="35", units="[IU]/L", result_status="F"),
               catalogue, mappings)
    assert (out.outcome, out.unit, out.value) == ("normalised", "U/L", Decimal("35"))


def test_a_code_accepts_its_own_unit(catalogue: Catalogue, mappings: MappingSet) -> None:
    """14585-4 (albumin/creatinine, urine) is given in mg/mmol{creat}, a mass per substance
    the property family does not list: the code's own unit is not refused."""
    out = _one(RawObservation(set_id="1", value_type="NM", code="14585-4", coding_system="LN",
                              value="2,5", units="mg/mmol{creat}", result_status="F"),
               catalogue, mappings)
    assert (out.outcome, out.unit, out.value) == ("normalised", "mg/mmol{creat}", Decimal("2.5"))
