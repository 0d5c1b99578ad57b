"""Units: from what laboratories write to UCUM, and conversions between UCUM units.

Laboratories write ``mmol/l``, ``µmol/L``, ``G/L``, ``mUI/L``, ``10^9/l``... UCUM (the Unified
Code for Units of Measure, https://ucum.org/ucum) is what LOINC's EXAMPLE_UCUM_UNITS and the
CI-SIS CR-BIO use, so every unit is first normalised to a UCUM code, then converted with pint
through ucumvert's UCUM grammar rather than with hand-written factors. Mass ↔ substance needs a
molar mass (``loinc.canonical``); anything else that does not share a dimension is refused.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from decimal import Decimal
from functools import lru_cache
from typing import Any

# LOINC PROPERTY → the family of units that can express it. Two units convert only within one
# family (plus mass ↔ substance with a molar mass).
PROPERTY_FAMILY: dict[str, str] = {
    "MCnc": "mass_conc",
    "SCnc": "substance_conc",
    "NCnc": "number_conc",
    "CCnc": "catalytic_conc",
    "ACnc": "arbitrary_conc",
    "MFr": "fraction",
    "VFr": "fraction",
    "NFr": "fraction",
    "SFr": "fraction",
    "Ratio": "fraction",
    "MRto": "fraction",
    "SRto": "fraction",
    "RelTime": "fraction",
    "RelACnc": "fraction",
    "Rden": "fraction",
    "Time": "time",
    "EntVol": "volume",
    "EntMass": "mass",
    "PPres": "pressure",
    "LsCnc": "ph",
    "Osmol": "osmolality",
    "VRat": "volume_rate",
    "ArVRat": "volume_rate",
    "Vel": "velocity",
    "MRat": "mass_rate",
    "SRat": "substance_rate",
    "Naric": "per_area",
    "Titr": "titer",
}

# Families whose values an analyte can move between with a molar mass.
MOLAR_FAMILIES = frozenset({"mass_conc", "substance_conc"})

# What labs write (case-folded, spaces removed, µ/μ → u) → UCUM, when it is unambiguous.
_SPELLINGS: dict[str, str] = {
    "g/l": "g/L",
    "mg/l": "mg/L",
    "ug/l": "ug/L",
    "ng/l": "ng/L",
    "pg/l": "pg/L",
    "g/dl": "g/dL",
    "mg/dl": "mg/dL",
    "ug/dl": "ug/dL",
    "g/100ml": "g/dL",
    "mg/100ml": "mg/dL",
    "mg/ml": "mg/mL",
    "ug/ml": "ug/mL",
    "ng/ml": "ng/mL",
    "pg/ml": "pg/mL",
    "mol/l": "mol/L",
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "nmol/l": "nmol/L",
    "pmol/l": "pmol/L",
    "meq/l": "meq/L",
    "mmol/mol": "mmol/mol",
    "10*9/l": "10*9/L",
    "10^9/l": "10*9/L",
    "x10^9/l": "10*9/L",
    "x10*9/l": "10*9/L",
    "10e9/l": "10*9/L",
    "giga/l": "10*9/L",
    "10*12/l": "10*12/L",
    "10^12/l": "10*12/L",
    "x10^12/l": "10*12/L",
    "10e12/l": "10*12/L",
    "t/l": "10*12/L",
    "tera/l": "10*12/L",
    "10*6/l": "10*6/L",
    "10^6/l": "10*6/L",
    "10*3/ul": "10*3/uL",
    "10^3/ul": "10*3/uL",
    "x10^3/ul": "10*3/uL",
    "k/ul": "10*3/uL",
    "10*6/ul": "10*6/uL",
    "10^6/ul": "10*6/uL",
    "/ul": "/uL",
    "/mm3": "/mm3",
    "/mm^3": "/mm3",
    "mm3": "/mm3",
    "/mm³": "/mm3",
    "elements/mm3": "/mm3",
    "/ml": "/mL",
    "/l": "/L",
    "%": "%",
    "pourcent": "%",
    "l/l": "L/L",
    "s": "s",
    "sec": "s",
    "seconde": "s",
    "secondes": "s",
    "min": "min",
    "mm/h": "mm/h",
    "mm/1h": "mm/h",
    "mm/1reh": "mm/h",
    "mm/1ereh": "mm/h",
    "mmhg": "mm[Hg]",
    "kpa": "kPa",
    "fl": "fL",
    "u3": "fL",
    "pg": "pg",
    "mosm/kg": "mosm/kg",
    "mosmol/kg": "mosm/kg",
    "mosm/l": "mosm/L",
    "mui/l": "m[IU]/L",
    "miu/l": "m[IU]/L",
    "mui/ml": "m[IU]/mL",
    "miu/ml": "m[IU]/mL",
    "uui/ml": "u[IU]/mL",
    "uiu/ml": "u[IU]/mL",
    "ku/l": "k[IU]/L",
    "ui/ml": "[IU]/mL",
    "iu/ml": "[IU]/mL",
    "u/ml": "U/mL",
    "ml/min": "mL/min",
    "ml/mn": "mL/min",
    "ml/min/1,73m2": "mL/min/{1.73_m2}",
    "ml/min/1.73m2": "mL/min/{1.73_m2}",
    "ml/min/1,73m²": "mL/min/{1.73_m2}",
    "ml/min/1.73m²": "mL/min/{1.73_m2}",
    "ml/mn/1,73m2": "mL/min/{1.73_m2}",
    "ml/mn/1.73m2": "mL/min/{1.73_m2}",
    "g/24h": "g/(24.h)",
    "mg/24h": "mg/(24.h)",
    "mmol/24h": "mmol/(24.h)",
    "/champ": "/[HPF]",
    "/hpf": "/[HPF]",
    "inr": "{INR}",
    "ratio": "{ratio}",
    "mg/mmol": "mg/mmol",
    "mg/g": "mg/g",
}

# Spellings whose meaning depends on the quantity (LOINC property) of the code they report.
# French usage: "G/L" is giga per litre (10^9/L) for cell counts, g/L for a mass concentration;
# "UI/L" is an enzyme unit (U/L) for a catalytic activity, an international unit otherwise.
_BY_FAMILY: dict[str, dict[str, str]] = {
    "g/l": {"number_conc": "10*9/L", "mass_conc": "g/L"},
    "ui/l": {"catalytic_conc": "U/L", "arbitrary_conc": "[IU]/L"},
    "iu/l": {"catalytic_conc": "U/L", "arbitrary_conc": "[IU]/L"},
    "u/l": {"catalytic_conc": "U/L", "arbitrary_conc": "U/L"},
    "ku/l": {"catalytic_conc": "kU/L", "arbitrary_conc": "k[IU]/L"},
    # UCUM written out: CR-BIO documents give enzyme activities as "[IU]/L" (CI-SIS CR-BIO
    # examples); for a catalytic concentration that is the enzyme unit U/L, as "UI/L" above.
    "[iu]/l": {"catalytic_conc": "U/L", "arbitrary_conc": "[IU]/L"},
    "[iu]/ml": {"catalytic_conc": "U/mL", "arbitrary_conc": "[IU]/mL"},
    "%": {"fraction": "%"},
}

_ANNOTATION_RE = re.compile(r"\{[^}]*\}")


class UnitError(ValueError):
    """A unit that cannot be read, or a conversion that would need a guess.

    ``reason`` is machine-readable: ``unknown_unit``, ``incompatible_units``,
    ``no_molar_mass``, ``unit_out_of_range`` (a factor beyond a float) or
    ``no_declared_conversion`` (the units are related by an equation or an offset, not a
    ratio, and no equation is declared in ``data/equations.csv``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip()
    text = text.replace("µ", "u").replace("μ", "u").replace(" ", "")
    return text.casefold()


_registry_lock = threading.Lock()
_registry: Any = None


def registry() -> Any:
    """The pint registry with UCUM definitions (built once: ~0.6 s)."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                from ucumvert import PintUcumRegistry

                _registry = PintUcumRegistry()
    return _registry


@lru_cache(maxsize=4096)
def _pint_unit(ucum: str) -> Any:
    """Parse a UCUM code into a pint quantity of 1 of that unit (annotations dropped).

    UCUM §2.1.5: annotations in curly braces are equivalent to the unit 1, so they do not change
    the dimension; ``convert`` separately refuses to convert across different annotations.
    """
    bare = _ANNOTATION_RE.sub("", ucum).rstrip("/.")
    if not bare:
        bare = "1"
    if bare.startswith("/"):
        bare = "1" + bare
    return registry().from_ucum(bare)


@lru_cache(maxsize=4096)
def family(ucum: str) -> str:
    """The family (see ``PROPERTY_FAMILY``) of a UCUM unit, ``unknown`` when unparseable."""
    if ucum == "[pH]":
        return "ph"
    if "[IU]" in ucum or "[arb'U]" in ucum:
        return "arbitrary_conc"
    if ucum.startswith("{titer") or ucum == "{titer}":
        return "titer"
    if "meq" in ucum or "eq/" in ucum:
        return "equivalents"
    try:
        quantity = _pint_unit(ucum)
    except Exception:
        return "unknown"
    dims = dict(quantity.dimensionality)
    table: dict[frozenset[tuple[str, float]], str] = {
        frozenset({("[mass]", 1), ("[length]", -3)}): "mass_conc",
        frozenset({("[substance]", 1), ("[length]", -3)}): "substance_conc",
        frozenset({("[length]", -3)}): "number_conc",
        frozenset({("[substance]", 1), ("[time]", -1), ("[length]", -3)}): "catalytic_conc",
        frozenset(): "fraction",
        frozenset({("[time]", 1)}): "time",
        frozenset({("[length]", 3)}): "volume",
        frozenset({("[mass]", 1)}): "mass",
        frozenset({("[mass]", 1), ("[length]", -1), ("[time]", -2)}): "pressure",
        frozenset({("[substance]", 1), ("[mass]", -1)}): "osmolality",
        frozenset({("[length]", 3), ("[time]", -1)}): "volume_rate",
        frozenset({("[length]", 1), ("[time]", -1)}): "velocity",
        frozenset({("[mass]", 1), ("[time]", -1)}): "mass_rate",
        frozenset({("[substance]", 1), ("[time]", -1)}): "substance_rate",
        frozenset({("[length]", -2)}): "per_area",
        # Offset scales (Cel, [degF]): pint would turn an offset into a factor (1 Cel → 33.8
        # [degF]); kept apart so that ``conversion_factor`` refuses them.
        frozenset({("[temperature]", 1)}): "temperature",
    }
    return table.get(frozenset(dims.items()), "other")


@lru_cache(maxsize=4096)
def normalise_unit(raw: str, prop: str | None = None) -> str:
    """Return the UCUM code for a unit as a laboratory wrote it.

    ``prop`` is the LOINC PROPERTY of the code the value is reported under; it settles
    ambiguous spellings (``G/L``, ``UI/L``). Raises ``UnitError("unknown_unit")`` when the text
    is neither a known spelling nor valid UCUM, so that no number is produced from a unit
    nobody understood.
    """
    text = raw.strip()
    if not text:
        raise UnitError("unknown_unit", "no unit")
    folded = _fold(text)
    wanted = PROPERTY_FAMILY.get(prop or "", "")
    readings = _BY_FAMILY.get(folded)
    if readings:
        if wanted in readings:
            return readings[wanted]
        if folded in _SPELLINGS:
            return _SPELLINGS[folded]
        return next(iter(readings.values()))
    if folded in _SPELLINGS:
        return _SPELLINGS[folded]
    # Valid UCUM as sent (case-sensitive, UCUM §2.1.3) or after the usual fixes.
    fixed = text.replace("µ", "u").replace("μ", "u").replace("^", "*").replace(" ", "")
    fixed = re.sub(r"(?<=[a-zA-Z])l\b", "L", fixed)
    for candidate in dict.fromkeys((text, fixed)):
        if family(candidate) not in ("unknown",):
            return candidate
    raise UnitError("unknown_unit", f"unit {raw!r} is not UCUM and not a known spelling")


def _annotations(ucum: str) -> tuple[str, ...]:
    return tuple(_ANNOTATION_RE.findall(ucum))


def _round_factor(value: float) -> Decimal:
    """Keep 12 significant digits: enough for any lab value, and it drops float noise."""
    return Decimal(format(value, ".12g"))


@lru_cache(maxsize=8192)
def conversion_factor(source: str, target: str, molar_mass: float | None = None) -> Decimal:
    """Multiplier taking a value in UCUM ``source`` to UCUM ``target``.

    Mass ↔ substance concentration uses ``molar_mass`` (g/mol); without one it is refused.
    Annotations (``{INR}``, ``{creat}``) must match, since UCUM treats them as 1 and a
    conversion across them would equate different things.
    """
    if source == target:
        return Decimal(1)
    src_family, dst_family = family(source), family(target)
    if "unknown" in (src_family, dst_family):
        raise UnitError("unknown_unit", f"cannot read {source!r} or {target!r} as UCUM")
    if _annotations(source) != _annotations(target) or "ph" in (src_family, dst_family):
        raise UnitError("incompatible_units", f"{source} cannot be converted to {target}")
    if "temperature" in (src_family, dst_family):
        # UCUM, "special units on non-ratio scales": Cel and [degF] are not multiples of K, so
        # no factor exists; the offset is declared in data/equations.csv or refused.
        raise UnitError("no_declared_conversion", f"{source} → {target} is not a ratio")
    src = _pint_unit(source)
    dst = _pint_unit(target)
    if src_family == dst_family:
        quantity = src
    elif {src_family, dst_family} == MOLAR_FAMILIES:
        if not molar_mass:
            raise UnitError("no_molar_mass", f"{source} → {target} needs a molar mass")
        # ucumvert builds its quantities in its own registry: make the molar mass there too.
        molar = src._REGISTRY.Quantity(molar_mass, "g/mol")
        quantity = src / molar if src_family == "mass_conc" else src * molar
    else:
        raise UnitError("incompatible_units",
                        f"{source} ({src_family}) is not {target} ({dst_family})")
    # A well-formed UCUM unit can still be absurd ("10*330/L", found by fuzzing): its factor
    # overflows a float, or underflows to 0 — which would turn every value into 0. Such a
    # value is kept as received, with a reason; it is not a crash and not a wrong number.
    try:
        factor = float(quantity.to(dst).magnitude)
    except (OverflowError, ZeroDivisionError) as exc:
        raise UnitError("unit_out_of_range", f"{source} → {target}: {exc}") from None
    if factor == 0 or not math.isfinite(factor):
        raise UnitError("unit_out_of_range", f"{source} → {target}: factor {factor}")
    return _round_factor(factor)


def unit_matches_property(ucum: str, prop: str) -> bool:
    """True when a UCUM unit can express the LOINC property (same family)."""
    wanted = PROPERTY_FAMILY.get(prop)
    if wanted is None:
        return True  # properties we do not classify are not checked
    got = family(ucum)
    if wanted == "arbitrary_conc" and got == "catalytic_conc":
        return True  # LOINC ACnc codes use U/mL for tumour markers (CA 125, CA 19-9)
    return got == wanted
