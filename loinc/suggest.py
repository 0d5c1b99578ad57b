"""Ranked LOINC candidates for a local laboratory code nobody has mapped yet.

Used by ``parcours mappings suggest``. The score is deterministic and explained: each candidate
carries the parts it is made of (label, unit, specimen, prior), so an operator sees why a code
ranks first. The unit weighs heavily because LOINC fixes the property in the code: "GLY" in g/L
is a mass concentration, so 2345-7 must outrank 14749-6 (brief, Clarifications).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from loinc.catalogue import DATA_DIR, Catalogue, LoincTerm
from loinc.units import PROPERTY_FAMILY, UnitError, family, normalise_unit, unit_matches_property

SYNONYMS_YAML = DATA_DIR / "synonyms.yaml"

W_LABEL = 10.0  # full match of the label on one of the term's names
W_UNIT_MATCH = 4.0
W_UNIT_CLASH = -8.0
W_SPECIMEN_MATCH = 2.0
W_SPECIMEN_CLASH = -2.0
W_NO_METHOD = 0.6  # a method-less code is the safer default when nothing says which method
W_COMMON_SYSTEM = 0.4
_COMMON_SYSTEMS = {"Ser/Plas": 1.0, "Bld": 0.8, "Urine": 0.3, "PPP": 0.8}
W_TIMING_UNSAID = -1.0  # "Glucose^post CFst" needs the label to say "à jeun"
_TIMING_WORDS = {"jeun", "fasting", "fast", "pre", "avant", "repas", "prandial", "meal"}
_STOP = {"de", "du", "des", "la", "le", "les", "en", "in", "of", "by", "or", "et", "a", "l", "d"}


def fold(text: str) -> str:
    """Lower case, accents removed, punctuation as spaces: 'Glycémie à jeun' → 'glycemie a jeun'."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9]+", " ", plain.casefold()).strip()


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(t for t in fold(text).split() if t not in _STOP)


@dataclass(frozen=True, slots=True)
class Suggestion:
    loinc: str
    display: str
    score: float
    components: dict[str, float] = field(default_factory=dict)


@lru_cache(maxsize=4)
def _synonyms(path: Path = SYNONYMS_YAML) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    components = {k: [fold(v) for v in vs] for k, vs in data["components"].items()}
    specimens = {k: [fold(v) for v in vs] for k, vs in data["specimens"].items()}
    return components, specimens


def _names(term: LoincTerm, synonyms: dict[str, list[str]]) -> list[str]:
    names = [fold(term.base_component.replace(".", " ")), fold(term.long_common_name)]
    names += synonyms.get(term.component, []) or synonyms.get(term.base_component, [])
    if term.display_fr:
        names.append(fold(term.display_fr))
    if term.short_name:
        names.append(fold(term.short_name))
    return [n for n in names if n]


def _label_score(query: tuple[str, ...], query_text: str, names: list[str]) -> float:
    """1.0 when the label is one of the names; else the best share of label tokens found."""
    if not query:
        return 0.0
    best = 0.0
    for name in names:
        if query_text == name:
            return 1.0
        words = set(name.split())
        hits = sum(1 for t in query if t in words)
        if hits:
            # penalise long names matched by one word: 'glucose' vs 'glucose mean value ...'
            share = hits / len(query) * (0.6 + 0.4 * min(1.0, len(query) / max(1, len(words))))
            best = max(best, min(share, 0.95))
    return best


def _specimen(query_text: str, specimen: str | None, specimens: dict[str, list[str]]) -> str | None:
    if specimen:
        folded = fold(specimen)
        for system, words in specimens.items():
            if folded == fold(system) or folded in words:
                return system
    padded = f" {query_text} "
    for system, words in specimens.items():
        if any(f" {w} " in padded for w in words):
            return system
    return None


def suggest(
    text: str,
    *,
    catalogue: Catalogue,
    unit: str | None = None,
    specimen: str | None = None,
    code: str | None = None,
    limit: int = 5,
) -> list[Suggestion]:
    """Best LOINC candidates for a local label (and code), unit and specimen, best first."""
    synonyms, specimens = _synonyms()
    query_text = fold(" ".join(x for x in (text, code or "") if x))
    query = _tokens(query_text)
    code_text = fold(code) if code else ""
    wanted_system = _specimen(fold(text), specimen, specimens)
    unit_family: str | None = None
    ucum: str | None = None
    if unit and unit.strip():
        try:
            ucum = normalise_unit(unit)
            unit_family = family(ucum)
        except UnitError:
            unit_family = None
    scored: list[Suggestion] = []
    for term in catalogue:
        names = _names(term, synonyms)
        label = max(
            _label_score(query, query_text, names),
            _label_score(_tokens(text), fold(text), names),
            1.0 if code_text and code_text in names else 0.0,
        )
        if label <= 0:
            continue
        parts = {"label": round(W_LABEL * label, 3)}
        if unit_family is not None and ucum is not None:
            prop_family = PROPERTY_FAMILY.get(term.property)
            fits = unit_matches_property(ucum, term.property)
            if not fits and unit_family == "mass_conc" and prop_family == "number_conc":
                # French "G/L" reads as g/L out of context: also a count unit (10^9/L)
                fits = unit is not None and fold(unit) == "g l"
            parts["unit"] = W_UNIT_MATCH if fits else W_UNIT_CLASH
        if wanted_system is not None:
            parts["specimen"] = (
                W_SPECIMEN_MATCH if term.system == wanted_system else W_SPECIMEN_CLASH
            )
        prior = W_COMMON_SYSTEM * _COMMON_SYSTEMS.get(term.system, 0.0)
        if not term.method:
            prior += W_NO_METHOD
        elif term.method == "Automated count":
            # analysers count cells: LOINC's common-test ranking puts these codes first
            prior += W_NO_METHOD + 0.1
        if "^" in term.component and not _TIMING_WORDS & set(query):
            prior += W_TIMING_UNSAID
        parts["prior"] = round(prior, 3)
        score = round(sum(parts.values()), 3)
        scored.append(Suggestion(term.code, term.long_common_name, score, parts))
    scored.sort(key=lambda s: (-s.score, s.loinc))
    return scored[:limit]
