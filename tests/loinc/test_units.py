"""UCUM normalisation and conversion: known answers, refusals, round trips."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loinc.units import UnitError, conversion_factor, family, normalise_unit
from transformers.lab.values import convert


@pytest.mark.parametrize(
    ("raw", "prop", "ucum"),
    [
        ("mmol/l", "SCnc", "mmol/L"),
        ("mmol/L", None, "mmol/L"),
        ("g/l", "MCnc", "g/L"),
        ("G/L", "MCnc", "g/L"),
        ("G/L", "NCnc", "10*9/L"),  # French usage: giga per litre for counts
        ("g/L", "NCnc", "10*9/L"),
        ("T/L", "NCnc", "10*12/L"),
        ("µmol/L", None, "umol/L"),
        ("μmol/l", None, "umol/L"),  # Greek mu, not the micro sign
        ("umol/L", None, "umol/L"),
        ("10*9/L", None, "10*9/L"),
        ("10^9/l", None, "10*9/L"),
        ("/mm3", "NCnc", "/mm3"),
        ("mUI/L", "ACnc", "m[IU]/L"),
        ("UI/L", "ACnc", "[IU]/L"),
        ("UI/L", "CCnc", "U/L"),  # an enzyme activity written "UI/L" is U/L
        ("%", "VFr", "%"),
        ("g/dl", None, "g/dL"),
        ("mg/dl", None, "mg/dL"),
        ("sec", None, "s"),
        ("s", None, "s"),
        ("fl", None, "fL"),
        ("mmHg", None, "mm[Hg]"),
        ("ml/min/1,73m2", None, "mL/min/{1.73_m2}"),
        ("ng/mL", None, "ng/mL"),
        ("kPa", None, "kPa"),
    ],
)
def test_lab_spellings_normalise_to_ucum(raw: str, prop: str | None, ucum: str) -> None:
    assert normalise_unit(raw, prop) == ucum


@pytest.mark.parametrize("raw", ["", "xyz", "g/fortnight", "unités"])
def test_unknown_units_are_reported(raw: str) -> None:
    with pytest.raises(UnitError) as info:
        normalise_unit(raw)
    assert info.value.reason == "unknown_unit"


@pytest.mark.parametrize(
    ("value", "source", "target", "molar_mass", "expected"),
    [
        ("1.00", "g/L", "mmol/L", 180.156, "5.55"),  # glucose
        ("10", "mg/L", "umol/L", 113.120, "88.4"),  # creatinine
        ("14.0", "g/dL", "g/L", None, "140"),  # haemoglobin
        ("2.00", "g/L", "mmol/L", 386.664, "5.17"),  # total cholesterol
        ("0.30", "g/L", "mmol/L", 60.056, "5.00"),  # urea (5.0 within precision)
        ("7500", "/mm3", "10*9/L", None, "7.50"),  # leucocytes
        ("1.05", "g/L", "mmol/L", 180.156, "5.83"),  # not 5.8278...
        ("7", "mg/L", "umol/L", 584.673, "12.0"),  # bilirubin
        ("100", "ug/dL", "umol/L", 55.845, "17.9"),  # iron
        ("0.420", "L/L", "%", None, "42.0"),  # haematocrit
        ("1.85", "u[IU]/mL", "m[IU]/L", None, "1.85"),  # TSH: µUI/mL == mUI/L
        ("9.5", "mg/dL", "mmol/L", 40.078, "2.37"),  # calcium
    ],
)
def test_reference_conversions(
    value: str, source: str, target: str, molar_mass: float | None, expected: str
) -> None:
    factor = conversion_factor(source, target, molar_mass)
    assert convert(Decimal(value), factor) == Decimal(expected)


@pytest.mark.parametrize(
    ("source", "target", "molar_mass", "reason"),
    [
        ("g/L", "10*9/L", None, "incompatible_units"),  # mass ↔ count
        ("10*9/L", "g/L", 180.0, "incompatible_units"),
        ("[IU]/L", "10*9/L", None, "incompatible_units"),  # same pint dimension, not the same
        ("{INR}", "%", None, "incompatible_units"),
        ("g/L", "mmol/L", None, "no_molar_mass"),
        ("meq/L", "mmol/L", None, "incompatible_units"),  # needs the charge: never guessed
        ("s", "g/L", None, "incompatible_units"),
        # Well-formed UCUM whose factor does not fit a float (found by fuzzing: pint raised
        # OverflowError through the lab transformers).
        ("10*330/L", "10*12/L", None, "unit_out_of_range"),
        ("10*12/L", "10*400/L", None, "unit_out_of_range"),
    ],
)
def test_impossible_conversions_are_reported(
    source: str, target: str, molar_mass: float | None, reason: str
) -> None:
    with pytest.raises(UnitError) as info:
        conversion_factor(source, target, molar_mass)
    assert info.value.reason == reason


def test_unit_families() -> None:
    assert family("mmol/L") == "substance_conc"
    assert family("mg/dL") == "mass_conc"
    assert family("10*9/L") == "number_conc"
    assert family("m[IU]/L") == "arbitrary_conc"
    assert family("U/L") == "catalytic_conc"
    assert family("not a unit") == "unknown"


_PAIRS = [
    ("g/L", "mmol/L", 180.156),
    ("mg/dL", "umol/L", 113.120),
    ("g/dL", "g/L", None),
    ("/mm3", "10*9/L", None),
    ("mg/dL", "mmol/L", 386.664),
    ("ug/dL", "umol/L", 55.845),
]


@settings(max_examples=200, deadline=None)
@given(
    pair=st.sampled_from(_PAIRS),
    value=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999"), places=2),
)
def test_there_and_back_is_identity_within_precision(
    pair: tuple[str, str, float | None], value: Decimal
) -> None:
    source, target, mass = pair
    there = convert(value, conversion_factor(source, target, mass))
    back = convert(there, conversion_factor(target, source, mass))
    # each leg keeps >= 3 significant figures: the round trip differs by < 1 % of the value
    assert abs(back - value) <= abs(value) * Decimal("0.01")


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=12))
def test_an_unknown_unit_never_produces_a_number(raw: str) -> None:
    try:
        ucum = normalise_unit(raw)
    except UnitError:
        return
    # whatever was accepted must be a unit pint understands in a known family
    assert family(ucum) != "unknown"
