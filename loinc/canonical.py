"""Canonical unit per analyte and molar masses: where a result series ends up.

Brief, Clarifications: comparability groups results by analyte (LOINC component + system); the
canonical series uses one unit per analyte and the LOINC code whose property matches that unit.
A glucose sent in g/L under 2345-7 therefore ends in mmol/L under 14749-6.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loinc.catalogue import DATA_DIR, Catalogue, LoincTerm
from loinc.units import PROPERTY_FAMILY, UnitError, family, normalise_unit

MOLAR_MASSES_CSV = DATA_DIR / "molar_masses.csv"
CANONICAL_UNITS_CSV = DATA_DIR / "canonical_units.csv"

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
    ) -> None:
        self.catalogue = catalogue
        self.units = load_canonical_units() if units is None else units
        self.molar_masses = load_molar_masses() if molar_masses is None else molar_masses
        self._targets: dict[str, Target | None] = {}

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
