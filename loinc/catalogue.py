"""LOINC catalogue: the terms Parcours can normalise to, and where they come from.

The catalogue is read from a subset shipped with Parcours (``data/loinc_subset.csv``, same column
names as the official ``Loinc.csv``) or, when a site holds one, from the official LOINC release
CSV. Normalisation only needs the six LOINC axes plus a display name and an example unit, so both
sources load into the same small ``LoincTerm``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from safexml import parse_shipped

DATA_DIR = Path(__file__).resolve().parent / "data"
SUBSET_CSV = DATA_DIR / "loinc_subset.csv"
ANS_DIR = DATA_DIR / "ans"

LOINC_SYSTEM_NAMES = frozenset({"LN", "LNC", "LOINC", "2.16.840.1.113883.6.1"})
"""OBX-3.3 values that mean "this is a LOINC code" (HL7 table 0396 says LN; OID from HL7)."""

_CODE_RE = re.compile(r"^(\d{1,7})-(\d)$")
_SVS_NS = "{urn:ihe:iti:svs:2008}"


class CatalogueError(ValueError):
    """A catalogue file cannot be read (missing column, bad code)."""


def loinc_check_digit(number: str) -> int:
    """Return the LOINC check digit of the numeric part (the "mod 10" algorithm LOINC uses).

    Why: a typo in a mapping file (2354-7 for 2345-7) is still a well-formed code; the check
    digit catches it before it mislabels results.
    """
    digits = number[::-1]
    odd = digits[0::2][::-1]  # positions 1, 3, 5... from the right
    even = digits[1::2][::-1]
    joined = even + str(int(odd) * 2)
    return (10 - sum(int(c) for c in joined) % 10) % 10


def is_valid_loinc_code(code: str) -> bool:
    """True when ``code`` has the LOINC shape ``NNNNN-C`` and a correct check digit."""
    match = _CODE_RE.match(code)
    return bool(match) and loinc_check_digit(match.group(1)) == int(match.group(2))


@dataclass(frozen=True, slots=True)
class LoincTerm:
    """One LOINC term, reduced to what normalisation and suggestion need."""

    code: str
    component: str
    property: str
    time: str
    system: str
    scale: str
    method: str
    long_common_name: str
    example_ucum_unit: str = ""
    loinc_class: str = ""
    category: str = ""
    display_fr: str = ""
    short_name: str = ""
    status: str = "ACTIVE"

    @property
    def analyte(self) -> tuple[str, str]:
        """Component + system: what makes two results comparable (brief, Clarifications)."""
        return (self.component, self.system)

    @property
    def base_component(self) -> str:
        """The component without its challenge/timing suffix (``Glucose^post CFst`` → Glucose)."""
        return self.component.split("^", 1)[0]


class Catalogue:
    """LOINC terms indexed by code and by their axes (to find the sibling of another property)."""

    def __init__(self, terms: Iterable[LoincTerm]) -> None:
        self._by_code: dict[str, LoincTerm] = {}
        self._by_axes: dict[tuple[str, str, str, str, str, str], LoincTerm] = {}
        for term in terms:
            self._by_code[term.code] = term
            key = (term.component, term.property, term.time, term.system, term.scale, term.method)
            # The first term wins: a release lists a deprecated code after its replacement only
            # by accident, and ACTIVE terms are loaded first by the loaders below.
            self._by_axes.setdefault(key, term)

    def __len__(self) -> int:
        return len(self._by_code)

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __iter__(self) -> Iterator[LoincTerm]:
        return iter(self._by_code.values())

    def get(self, code: str) -> LoincTerm | None:
        return self._by_code.get(code)

    def sibling(self, term: LoincTerm, prop: str) -> LoincTerm | None:
        """The term measuring the same thing (component, time, system, scale, method) as ``prop``.

        Why: LOINC fixes the property in the code, so a glucose converted from g/L to mmol/L must
        move from 2345-7 (MCnc) to 14749-6 (SCnc); the method must stay the same or the codes
        would not describe the same measurement.
        """
        if term.property == prop:
            return term
        key = (term.component, prop, term.time, term.system, term.scale, term.method)
        return self._by_axes.get(key)

    def merged(self, other: Catalogue) -> Catalogue:
        """A catalogue with ``other``'s terms added; ours win (they carry French names)."""
        mine = dict(self._by_code)
        for term in other:
            if term.code not in mine:
                mine[term.code] = term
        return Catalogue(mine.values())


def _french_names(ans_dir: Path) -> dict[str, str]:
    """French display names from the ANS SVS value sets (first one found per code)."""
    names: dict[str, str] = {}
    if not ans_dir.is_dir():
        return names
    for path in sorted(ans_dir.glob("*.xml")):
        root = parse_shipped(path)
        for concept in root.iter(f"{_SVS_NS}Concept"):
            code = concept.get("code", "")
            name = concept.get("displayName", "")
            if code and name and code not in names:
                names[code] = name
    return names


def _require(row: dict[str, str], column: str, path: Path, line: int) -> str:
    value = row.get(column)
    if value is None:
        raise CatalogueError(f"{path}:{line}: column {column} missing")
    return value.strip()


def load_catalogue(path: Path = SUBSET_CSV, *, ans_dir: Path | None = ANS_DIR) -> Catalogue:
    """Load the LOINC subset shipped with Parcours, with ANS French display names."""
    french = _french_names(ans_dir) if ans_dir is not None else {}
    terms: list[LoincTerm] = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            line = reader.line_num
            code = _require(row, "LOINC_NUM", path, line)
            if not is_valid_loinc_code(code):
                raise CatalogueError(f"{path}:{line}: {code!r} is not a valid LOINC code")
            terms.append(
                LoincTerm(
                    code=code,
                    component=_require(row, "COMPONENT", path, line),
                    property=_require(row, "PROPERTY", path, line),
                    time=_require(row, "TIME_ASPCT", path, line),
                    system=_require(row, "SYSTEM", path, line),
                    scale=_require(row, "SCALE_TYP", path, line),
                    method=_require(row, "METHOD_TYP", path, line),
                    long_common_name=_require(row, "LONG_COMMON_NAME", path, line),
                    example_ucum_unit=row.get("EXAMPLE_UCUM_UNITS", "").strip(),
                    loinc_class=row.get("CLASS", "").strip(),
                    category=row.get("CATEGORY", "").strip(),
                    display_fr=french.get(code, ""),
                )
            )
    return Catalogue(terms)


RELEASE_COLUMNS = (
    "LOINC_NUM",
    "COMPONENT",
    "PROPERTY",
    "TIME_ASPCT",
    "SYSTEM",
    "SCALE_TYP",
    "METHOD_TYP",
    "CLASS",
    "LONG_COMMON_NAME",
    "STATUS",
)
"""Columns of the official ``LoincTable/Loinc.csv`` that the release loader needs."""


def load_loinc_release(
    path: Path,
    *,
    lab_only: bool = True,
    include_deprecated: bool = False,
    french_names: dict[str, str] | None = None,
) -> Catalogue:
    """Load the official LOINC release table (``LoincTable/Loinc.csv``).

    Why a separate loader: the release has ~100,000 terms and ~40 columns, some only in recent
    versions (``EXAMPLE_UCUM_UNITS`` since 2.5x), so only the needed columns are read and the
    optional ones are tolerated when absent. ``lab_only`` keeps CLASSTYPE 1 (laboratory) terms.
    ACTIVE and TRIAL terms are kept; DISCOURAGED and DEPRECATED only on request, and after the
    active ones so that an active code wins when two share the same axes.
    """
    french = french_names if french_names is not None else _french_names(ANS_DIR)
    active: list[LoincTerm] = []
    retired: list[LoincTerm] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in RELEASE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CatalogueError(f"{path}: not a LOINC release table, missing {', '.join(missing)}")
        for row in reader:
            if lab_only and row.get("CLASSTYPE", "1").strip() not in ("", "1"):
                continue
            status = row["STATUS"].strip().upper()
            is_active = status in ("ACTIVE", "TRIAL", "")
            if not is_active and not include_deprecated:
                continue
            code = row["LOINC_NUM"].strip()
            if not is_valid_loinc_code(code):
                raise CatalogueError(f"{path}:{reader.line_num}: {code!r} is not a LOINC code")
            term = LoincTerm(
                code=code,
                component=row["COMPONENT"].strip(),
                property=row["PROPERTY"].strip(),
                time=row["TIME_ASPCT"].strip(),
                system=row["SYSTEM"].strip(),
                scale=row["SCALE_TYP"].strip(),
                method=row["METHOD_TYP"].strip(),
                long_common_name=row["LONG_COMMON_NAME"].strip(),
                example_ucum_unit=(row.get("EXAMPLE_UCUM_UNITS") or "").strip().split(";")[0],
                loinc_class=row["CLASS"].strip(),
                short_name=(row.get("SHORTNAME") or "").strip(),
                status=status or "ACTIVE",
                display_fr=french.get(code, ""),
            )
            (active if is_active else retired).append(term)
    return Catalogue([*active, *retired])


def with_french_name(term: LoincTerm, name: str) -> LoincTerm:
    """Return ``term`` with a French display name (used by tests and site overrides)."""
    return replace(term, display_fr=name)
