"""Numbers as laboratories write them: decimal commas, comparators, ranges, precision.

HL7 v2.5.1 chapter 7 (OBX-5) carries an NM as a decimal string and an SN (structured numeric,
chapter 2A.75) as ``<comparator>^<num1>^<separator/suffix>^<num2>``; OBX-7 (reference range) is
free text such as ``3.9-5.8``, ``<5`` or ``> 60``. French laboratories often use a decimal comma.
Values stay ``Decimal`` so that 1.05 stays 1.05 and rounding follows the input's precision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from functools import lru_cache

_NUMBER = r"[-+]?(?:\d+(?:[.,]\d*)?|[.,]\d+)"
_NUMBER_RE = re.compile(rf"^\s*({_NUMBER})\s*$")
_COMPARATOR_RE = re.compile(rf"^\s*(<=|>=|<|>|≤|≥|=)\s*({_NUMBER})\s*$")
_RANGE_RE = re.compile(rf"^\s*\[?\s*({_NUMBER})\s*(?:-|–|—|à|a|to|;)\s*({_NUMBER})\s*\]?\s*$")
_COMPARATORS = {"≤": "<=", "≥": ">=", "=": ""}
MIN_SIGNIFICANT = 3


_PLAIN_RE = re.compile(r"\d+(?:[.,]\d+)?")


def parse_decimal(text: str) -> Decimal | None:
    """``1,05`` / ``1.05`` / `` 7 500`` → Decimal; None when it is not a plain number."""
    if _PLAIN_RE.fullmatch(text):  # the common case, kept fast
        return Decimal(text.replace(",", "."))
    cleaned = text.strip().replace("\u00a0", "").replace(" ", "")
    match = _NUMBER_RE.match(cleaned)
    if not match:
        return None
    try:
        return Decimal(match.group(1).replace(",", "."))
    except InvalidOperation:
        return None


@dataclass(frozen=True, slots=True)
class Quantity:
    """A numeric result: ``comparator`` is '', '<', '<=', '>' or '>='."""

    value: Decimal
    comparator: str = ""


def parse_numeric(value_type: str, text: str) -> Quantity | None:
    """Read OBX-5 as a number for NM and SN (and an NM sent as ``<0.5``, as labs do).

    Returns None for SN ratios and ranges (``^1^:^128``, ``^3^-^5``): they are kept as sent.
    """
    if value_type == "SN" or "^" in text:
        parts = (text.split("^") + ["", "", "", ""])[:4]
        comparator, num1, separator, num2 = (p.strip() for p in parts)
        if separator or num2:
            return None
        number = parse_decimal(num1)
        if number is None:
            return None
        comparator = _COMPARATORS.get(comparator, comparator)
        if comparator not in ("", "<", "<=", ">", ">=", "<>"):
            return None
        return Quantity(number, "" if comparator == "<>" else comparator)
    number = parse_decimal(text)
    if number is not None:
        return Quantity(number)
    match = _COMPARATOR_RE.match(text)
    if match:
        comparator = _COMPARATORS.get(match.group(1), match.group(1))
        number = parse_decimal(match.group(2))
        if number is not None:
            return Quantity(number, comparator)
    return None


@dataclass(frozen=True, slots=True)
class ReferenceRange:
    """OBX-7 read as bounds; a one-sided range (``<5``) has one bound."""

    low: Decimal | None
    high: Decimal | None
    low_inclusive: bool = True
    high_inclusive: bool = True


@lru_cache(maxsize=8192)
def parse_range(text: str) -> ReferenceRange | None:
    """``3.9-5.8``, ``3,9-5,8``, ``<5``, ``> 60``, ``[3.9 ; 5.8]``; None when unreadable."""
    if not text.strip():
        return None
    match = _RANGE_RE.match(text)
    if match:
        low = parse_decimal(match.group(1))
        high = parse_decimal(match.group(2))
        if low is not None and high is not None and low <= high:
            return ReferenceRange(low, high)
        return None
    match = _COMPARATOR_RE.match(text)
    if match:
        comparator = _COMPARATORS.get(match.group(1), match.group(1))
        bound = parse_decimal(match.group(2))
        if bound is None or comparator == "":
            return None
        if comparator.startswith("<"):
            return ReferenceRange(None, bound, high_inclusive=comparator == "<=")
        return ReferenceRange(bound, None, low_inclusive=comparator == ">=")
    return None


def significant_figures(value: Decimal) -> int:
    """Significant figures written in ``value``.

    Trailing zeros of an integer (``7500``) are ambiguous and not counted; zeros after a
    decimal point (``14.0``, ``0.30``) are.
    """
    sign, digits, exponent = value.as_tuple()
    del sign
    figures = list(digits)
    while figures and figures[0] == 0:
        figures.pop(0)
    if not figures:
        return 1
    if isinstance(exponent, int) and exponent >= 0:
        while len(figures) > 1 and figures[-1] == 0:
            figures.pop()
    return len(figures)


def round_significant(value: Decimal, figures: int) -> Decimal:
    """Round to ``figures`` significant figures, half up (the laboratory convention)."""
    if value.is_zero():
        return Decimal(0)
    # quantize refuses (InvalidOperation) a result with more digits than the context's
    # precision: a value sent with 40 figures (found by fuzzing), or a large integer brought
    # back to its units digit below. Enough precision for both, whatever the value.
    with localcontext() as ctx:
        ctx.prec = max(ctx.prec, figures + 2, value.adjusted() + 3)
        quantum = Decimal(1).scaleb(value.adjusted() - figures + 1)
        rounded = value.quantize(quantum, rounding=ROUND_HALF_UP)
        if rounded.adjusted() != value.adjusted():  # 9.996 → 10.0: one figure too many
            rounded = rounded.quantize(quantum.scaleb(1), rounding=ROUND_HALF_UP)
        if rounded == rounded.to_integral_value() and rounded.as_tuple().exponent > 0:  # type: ignore[operator]
            rounded = rounded.quantize(Decimal(1))
    return rounded


def convert(value: Decimal, factor: Decimal, *, offset: Decimal = Decimal(0),
            figures: int | None = None) -> Decimal:
    """``value × factor + offset`` rounded to the precision of ``value`` (at least 3 figures).

    ``offset`` is non-zero only for a declared equation (HbA1c IFCC → NGSP, Cel → [degF]).

    Why at least 3: a unit change moves the decimal point, and an input written ``10`` mg/L
    (one figure by the strict rule) would become 90 µmol/L, losing what the lab measured; three
    figures is the resolution laboratories report for these analytes (88.4 µmol/L).
    """
    if factor == 1 and not offset:
        return value
    wanted = figures if figures is not None else max(significant_figures(value), MIN_SIGNIFICANT)
    return round_significant(value * factor + offset, wanted)


def format_decimal(value: Decimal) -> str:
    """Plain notation (never ``8.84E+4``)."""
    text = format(value, "f")
    return "0" if text in ("-0", "+0") else text
