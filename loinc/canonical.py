"""Canonical unit per analyte and molar masses: where a result series ends up.

Brief, Clarifications: comparability groups results by analyte (LOINC component + system); the
canonical series uses one unit per analyte and the LOINC code whose property matches that unit.
A glucose sent in g/L under 2345-7 therefore ends in mmol/L under 14749-6.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from loinc.catalogue import DATA_DIR, Catalogue, LoincTerm
from loinc.units import PROPERTY_FAMILY, UnitError, family, normalise_unit

MOLAR_MASSES_CSV = DATA_DIR / "molar_masses.csv"
CANONICAL_UNITS_CSV = DATA_DIR / "canonical_units.csv"
EQUATIONS_CSV = DATA_DIR / "equations.csv"

# The LOINC property that expresses each concentration family (LOINC Users' Guide, property
# axis): the code a converted value moves to.
_FAMILY_PROPERTY = {"mass_conc": "MCnc", "substance_conc": "SCnc", "number_conc": "NCnc"}


def _data_rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        lines = (line for line in handle if not line.startswith("#"))
        yield from csv.DictReader(lines)


@dataclass(frozen=True, slots=True)
class MolarMass:
    component: str
    grams_per_mole: float
    formula: str
    source: str
    note: str = ""


def load_molar_masses(path: Path = MOLAR_MASSES_CSV) -> dict[str, MolarMass]:
    """Molar masses by LOINC component, with the source of each figure."""
    masses: dict[str, MolarMass] = {}
    for row in _data_rows(path):
        masses[row["component"]] = MolarMass(
            component=row["component"],
            grams_per_mole=float(row["molar_mass_g_per_mol"]),
            formula=row["formula"],
            source=row["source"],
            note=row.get("note") or "",
        )
    return masses


def load_canonical_units(path: Path = CANONICAL_UNITS_CSV) -> dict[tuple[str, str], str]:
    """Canonical UCUM unit by analyte (component, system)."""
    return {(row["component"], row["system"]): row["unit"] for row in _data_rows(path)}


@dataclass(frozen=True, slots=True)
class Equation:
    """``to = slope × from + intercept`` between two UCUM units, for one analyte or any (``*``).

    Why a table: two scales related by an equation (HbA1c IFCC mmol/mol ↔ NGSP %) or by an
    offset (Cel ↔ [degF]) have no factor; pint would still produce one from the units alone.
    """

    component: str
    system: str
    from_code: str
    from_unit: str
    to_code: str
    to_unit: str
    slope: Decimal
    intercept: Decimal
    source: str

    def applies(self, analyte: tuple[str, str]) -> bool:
        return self.component in ("*", analyte[0]) and self.system in ("*", analyte[1])

    def between(self, source: str, target: str) -> tuple[Decimal, Decimal] | None:
        """(slope, intercept) taking ``source`` to ``target``, either way round."""
        if (source, target) == (self.from_unit, self.to_unit):
            return self.slope, self.intercept
        if (source, target) == (self.to_unit, self.from_unit):
            return 1 / self.slope, -self.intercept / self.slope
        return None


class EquationError(ValueError):
    """``equations.csv`` holds a row that cannot be used safely."""


def load_equations(path: Path = EQUATIONS_CSV) -> list[Equation]:
    """The declared non-ratio conversions; a decreasing equation is refused (it would swap the
    bounds of a reference range and the side of a flag)."""
    out: list[Equation] = []
    for n, row in enumerate(_data_rows(path), start=1):
        try:
            slope, intercept = Decimal(row["slope"]), Decimal(row["intercept"])
        except (InvalidOperation, KeyError) as exc:
            raise EquationError(f"{path}: row {n}: slope/intercept not numbers") from exc
        if slope <= 0:
            raise EquationError(f"{path}: row {n}: slope must be positive")
        out.append(Equation(row["component"], row["system"], row["from_code"],
                            row["from_unit"], row["to_code"], row["to_unit"], slope, intercept,
                            row["source"]))
    return out


@dataclass(frozen=True, slots=True)
class Target:
    """Where a result reported under ``term`` goes: a LOINC term and a UCUM unit."""

    term: LoincTerm
    unit: str


class CanonicalPolicy:
    """Decides the canonical code and unit of each analyte."""

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        units: dict[tuple[str, str], str] | None = None,
        molar_masses: dict[str, MolarMass] | None = None,
        equations: list[Equation] | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.units = load_canonical_units() if units is None else units
        self.molar_masses = load_molar_masses() if molar_masses is None else molar_masses
        self.equations = load_equations() if equations is None else equations
        self._targets: dict[str, Target | None] = {}

    def equation(self, term: LoincTerm, source: str, target: str) -> tuple[Decimal, Decimal] | None:
        """(slope, intercept) of a declared conversion for this analyte, None if none."""
        for eq in self.equations:
            if eq.applies(term.analyte):
                found = eq.between(source, target)
                if found is not None:
                    return found
        return None

    def code_for_unit(self, term: LoincTerm, unit: str) -> LoincTerm | None:
        """The code a declared equation says ``unit`` fixes for this analyte, when ``term``'s
        own unit is another (59261-8 is IFCC mmol/mol: a % under it is an NGSP 4548-4 result).

        Why not the property alone: both HbA1c codes are dimensionless fractions, so the unit's
        dimension cannot tell them apart; the calibration scheme the unit names does.
        """
        own = self.own_unit(term)
        if own is None or own == unit:
            return None
        for eq in self.equations:
            if not eq.applies(term.analyte) or eq.component == "*":
                continue
            if term.code not in (eq.from_code, eq.to_code):
                continue
            for code, declared in ((eq.from_code, eq.from_unit), (eq.to_code, eq.to_unit)):
                if declared == unit and code and code != term.code:
                    return self.catalogue.get(code)
        return None

    @staticmethod
    def own_unit(term: LoincTerm) -> str | None:
        """The code's EXAMPLE_UCUM_UNITS as UCUM, None when it has none."""
        if not term.example_ucum_unit:
            return None
        try:
            return normalise_unit(term.example_ucum_unit, term.property)
        except UnitError:
            return None

    def molar_mass(self, term: LoincTerm) -> float | None:
        """g/mol of the measured substance, by component then by base component."""
        found = self.molar_masses.get(term.component) or self.molar_masses.get(term.base_component)
        return found.grams_per_mole if found else None

    def target(self, term: LoincTerm) -> Target | None:
        """Canonical term and unit for results reported under ``term`` (cached).

        Returns None when the term has no unit to normalise to (ordinal, nominal results).
        """
        if term.code not in self._targets:
            self._targets[term.code] = self._compute_target(term)
        return self._targets[term.code]

    def _compute_target(self, term: LoincTerm) -> Target | None:
        canonical = self.units.get(term.analyte)
        if canonical:
            declared = self.code_for_unit(term, canonical)
            if declared is not None:  # IFCC 59261-8 → the NGSP % series under 4548-4
                return Target(declared, canonical)
            wanted = family(canonical)
            prop = _FAMILY_PROPERTY.get(wanted)
            if PROPERTY_FAMILY.get(term.property) == wanted:
                return Target(term, canonical)
            if prop is not None:
                sibling = self.catalogue.sibling(term, prop)
                if sibling is not None:
                    return Target(sibling, canonical)
        if term.example_ucum_unit:
            try:
                unit = normalise_unit(term.example_ucum_unit, term.property)
            except UnitError:
                return None
            return Target(term, unit)
        return None
