"""OBX-5 and OBX-7 reading: SN, comparators, ranges, decimal commas, precision."""

from __future__ import annotations

from decimal import Decimal

import pytest

from transformers.lab.values import (
    ReferenceRange,
    format_decimal,
    parse_numeric,
    parse_range,
    round_significant,
    significant_figures,
)


@pytest.mark.parametrize(
    ("value_type", "text", "value", "comparator"),
    [
        ("NM", "5.5", "5.5", ""),
        ("NM", "5,5", "5.5", ""),  # decimal comma
        ("NM", " 7 500 ", "7500", ""),
        ("SN", "<^0.5", "0.5", "<"),
        ("SN", ">^100", "100", ">"),
        ("SN", "^12", "12", ""),
        ("SN", "<=^0,5", "0.5", "<="),
        ("NM", "<0.5", "0.5", "<"),  # NM with a comparator, as some labs send
        ("NM", "> 60", "60", ">"),
    ],
)
def test_numeric_values(value_type: str, text: str, value: str, comparator: str) -> None:
    quantity = parse_numeric(value_type, text)
    assert quantity is not None
    assert quantity.value == Decimal(value)
    assert quantity.comparator == comparator


@pytest.mark.parametrize(
    ("value_type", "text"), [("SN", "^1^:^128"), ("SN", "^3^-^5"), ("NM", "abc")]
)
def test_non_scalar_values_are_not_numbers(value_type: str, text: str) -> None:
    assert parse_numeric(value_type, text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3.9-5.8", ReferenceRange(Decimal("3.9"), Decimal("5.8"))),
        ("3,9-5,8", ReferenceRange(Decimal("3.9"), Decimal("5.8"))),
        ("3.9 - 5.8", ReferenceRange(Decimal("3.9"), Decimal("5.8"))),
        ("<5", ReferenceRange(None, Decimal("5"), high_inclusive=False)),
        ("> 60", ReferenceRange(Decimal("60"), None, low_inclusive=False)),
        ("<=5", ReferenceRange(None, Decimal("5"))),
        ("[0,27 ; 4,20]", ReferenceRange(Decimal("0.27"), Decimal("4.20"))),
    ],
)
def test_reference_ranges(text: str, expected: ReferenceRange) -> None:
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["", "voir commentaire", "5.8-3.9", "négatif"])
def test_unreadable_ranges(text: str) -> None:
    assert parse_range(text) is None


@pytest.mark.parametrize(
    ("text", "figures"),
    [("1.05", 3), ("0.30", 2), ("14.0", 3), ("7500", 2), ("10", 1), ("0.007", 1)],
)
def test_significant_figures(text: str, figures: int) -> None:
    assert significant_figures(Decimal(text)) == figures


def test_rounding_half_up_and_no_float_noise() -> None:
    assert round_significant(Decimal("5.549999"), 3) == Decimal("5.55")
    assert round_significant(Decimal("5.8278"), 3) == Decimal("5.83")
    assert round_significant(Decimal("9.996"), 3) == Decimal("10.0")
    assert format_decimal(round_significant(Decimal("88400.1"), 3)) == "88400"


def test_rounding_a_value_with_more_figures_than_decimal_precision() -> None:
    """Found by fuzzing oru_crbio: quantize raised InvalidOperation past 28 digits."""
    from decimal import Decimal

    from transformers.lab.values import round_significant

    assert round_significant(Decimal("1234567890123456789012345678901234567890.5"), 40) == \
        Decimal("1234567890123456789012345678901234567891")
    assert round_significant(Decimal("3E+60"), 3) == Decimal("3E+60")
