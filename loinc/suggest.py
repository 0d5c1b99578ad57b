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
from loinc.units import UnitError, normalise_unit, unit_matches_property

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
W_PROPERTY_MATCH = 3.0  # the label names the LOINC property ("[Moles/Volume]")
W_PROPERTY_CLASH = -6.0
W_SYSTEM_MATCH = 3.0  # the label names the system ("Sérum/Plasma", "Urine")
W_SYSTEM_CLASH = -6.0  # a urine count is never a blood code
W_SCALE_CLASH = -3.0
W_METHOD_MATCH = 1.0
W_METHOD_UNSAID = -1.0  # a full LOINC-style label without a method names the method-less code
# Systems close enough that a stated one does not exclude the other (it still weighs).
_SYSTEM_GROUPS = ({"Ser", "Plas", "Ser/Plas", "Ser/Plas/Bld"},
                  {"Bld", "BldV", "BldA", "BldC", "Ser/Plas/Bld"}, {"Urine", "Urine sed"})
PRESELECT_MIN_SCORE = 12.0
PRESELECT_MIN_LABEL = 8.0
"""Below these (total, and label part) a candidate is shown but never pre-selected (UI) nor
called confident (CLI): the label does not back it enough for an operator to accept it with
one click — the unit and specimen agreeing with "Alpha-1 globulines" do not make
alpha-1-fetoprotein right."""
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

    @property
    def confident(self) -> bool:
        """High enough to be pre-selected (see ``PRESELECT_MIN_SCORE``)."""
        return (self.score >= PRESELECT_MIN_SCORE
                and self.components.get("label", 0.0) >= PRESELECT_MIN_LABEL)


# The LOINC axes as the ANS CI-SIS value sets write them in French (JDV_Examen*, the CR-BIO
# examples: "Urée [Moles/Volume] Sérum/Plasma ; Numérique", or the colon form
# "Glucose:Masse/Volume:Ponctuel:Sang capillaire:Numérique:"), folded, and in English as
# LOINC's long common names write them.
_PROPERTIES = {
    "masse volume": "MCnc", "mass volume": "MCnc",
    "moles volume": "SCnc", "substance volume": "SCnc",
    "nombre volume": "NCnc", "number volume": "NCnc",
    "arbitraire volume": "ACnc", "units volume": "ACnc",
    "catalytique volume": "CCnc", "activite catalytique volume": "CCnc",
    "enzymatic activity volume": "CCnc",
    "fraction volumique": "VFr", "volume fraction": "VFr",
    "fraction massique": "MFr", "mass fraction": "MFr",
    "fraction de nombres": "NFr", "number fraction": "NFr",
    "fraction molaire": "SFr", "fraction de substance": "SFr", "moles fraction": "SFr",
    "volume d entite": "EntVol", "entitic volume": "EntVol",
    "masse d entite": "EntMass", "entitic mass": "EntMass",
    "temps": "Time", "time": "Time", "temps relatif": "RelTime", "relative time": "RelTime",
    "volume temps": "VRat", "volume time": "VRat", "ratio": "Ratio",
    "masse ratio": "MRto", "mass ratio": "MRto", "moles ratio": "SRto", "molar ratio": "SRto",
    "presence seuil": "PrThr", "presence": "PrThr", "type": "Type",
    "pression partielle": "PPres", "osmolalite": "Osmol", "titre": "Titr",
    "identification": "Prid", "sensibilite": "Susc", "aspect": "Aspect",
}
_SYSTEMS = {
    "serum plasma": "Ser/Plas", "serum or plasma": "Ser/Plas", "serum": "Ser",
    "plasma": "Plas", "sang": "Bld", "blood": "Bld", "sang capillaire": "BldC",
    "capillary blood": "BldC", "sang arteriel": "BldA", "arterial blood": "BldA",
    "sang veineux": "BldV", "venous blood": "BldV", "urine": "Urine", "urines": "Urine",
    "plasma pauvre en plaquettes": "PPP", "platelet poor plasma": "PPP",
    "erythrocytes": "RBC", "red blood cells": "RBC", "sang buvard": "Bld.dot",
    "isolat": "Isolate", "lcr": "CSF", "liquide cephalorachidien": "CSF",
    "sediments urinaires": "Urine sed",
}
_SCALES = {"numerique": "Qn", "quantitatif": "Qn", "qualitatif": "Ord", "ordinal": "Ord",
           "semi quantitatif": "Ord", "resultat nominal": "Nom", "nominal": "Nom",
           "alphanumerique": "Nar", "narratif": "Nar"}
_METHODS = {"comptage automate": "Automated count", "comptage automatee": "Automated count",
            "coagulation": "Coag", "electrophorese": "Electrophoresis", "hplc": "HPLC",
            "ifcc": "IFCC", "calcul": "Calculated", "bandelette": "Test strip"}
_BRACKET_RE = re.compile(r"^(?P<component>[^\[\]]+?)\s*\[(?P<property>[^\]]+)\]\s*(?P<rest>.*)$")


@dataclass(frozen=True, slots=True)
class LabelAxes:
    """The LOINC axes a label states; None for an axis it does not state (``method`` is ""
    when a complete label states none)."""

    component: str
    property: str | None = None
    system: str | None = None
    scale: str | None = None
    method: str | None = None


def parse_axes(label: str) -> LabelAxes | None:
    """Read a LOINC-style label ("Comp [Property] System ; Scale ; Method" or the colon form
    "Comp:Property:Time:System:Scale:Method"); None for a plain local label ("GLY").

    Why: ANS value sets and CR-BIO documents name tests this way, and scoring every word of
    such a label against every name ranked "[Moles/Volume]" above the analyte.
    """
    text = label.strip()
    match = _BRACKET_RE.match(text)
    if match:
        prop = _PROPERTIES.get(fold(match.group("property")))
        if prop is None:
            return None
        parts = [fold(p) for p in match.group("rest").split(";")]
        system = _SYSTEMS.get(parts[0]) if parts and parts[0] else None
        scale = _SCALES.get(parts[1]) if len(parts) > 1 else None
        method = _METHODS.get(parts[2], parts[2] or None) if len(parts) > 2 else None
        if method is None and scale is not None:
            method = ""  # stated by its absence: the label is complete up to the scale
        return LabelAxes(match.group("component").strip(), prop, system, scale, method)
    pieces = text.split(":")
    if len(pieces) >= 5 and _PROPERTIES.get(fold(pieces[1])):
        method = fold(pieces[5]) if len(pieces) > 5 and pieces[5].strip() else None
        return LabelAxes(pieces[0].strip(), _PROPERTIES[fold(pieces[1])],
                         _SYSTEMS.get(fold(pieces[3])), _SCALES.get(fold(pieces[4])),
                         _METHODS.get(method, method) if method else "")
    return None


@lru_cache(maxsize=4)
def _synonyms(path: Path = SYNONYMS_YAML) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    components = {k: [fold(v) for v in vs] for k, vs in data["components"].items()}
    specimens = {k: [fold(v) for v in vs] for k, vs in data["specimens"].items()}
    return components, specimens


@lru_cache(maxsize=8192)
def _names(term: LoincTerm, synonyms_path: Path = SYNONYMS_YAML) -> tuple[str, ...]:
    synonyms = _synonyms(synonyms_path)[0]
    names = [fold(term.base_component.replace(".", " ")), fold(term.long_common_name)]
    names += synonyms.get(term.component, []) or synonyms.get(term.base_component, [])
    if term.display_fr:
        names.append(fold(term.display_fr))
        axes = parse_axes(term.display_fr)  # the ANS name's component: "Créatinine"
        if axes is not None:
            names.append(fold(axes.component))
    if term.short_name:
        names.append(fold(term.short_name))
    return tuple(n for n in names if n)


def _label_score(query: tuple[str, ...], query_text: str, names: tuple[str, ...]) -> float:
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


def _system_compatible(wanted: str | None, system: str) -> bool:
    if wanted is None or wanted == system:
        return True
    return any(wanted in group and system in group for group in _SYSTEM_GROUPS)


_french_cache: dict[int, tuple[Catalogue, dict[tuple[str, str], tuple[str, ...]]]] = {}


def _french_components(catalogue: Catalogue) -> dict[tuple[str, str], tuple[str, ...]]:
    """The ANS French component of each analyte, shared by its codes of every property: the
    ANS names 53049-3 "Glucose à jeun [Masse/Volume]", so its moles sibling 40193-5 is the
    "Glucose à jeun [Moles/Volume]" a CR-BIO document writes."""
    cached = _french_cache.get(id(catalogue))
    if cached is not None and cached[0] is catalogue:
        return cached[1]
    found: dict[tuple[str, str], list[str]] = {}
    for term in catalogue:
        axes = parse_axes(term.display_fr) if term.display_fr else None
        if axes is not None:
            name = fold(axes.component)
            if name not in found.setdefault(term.analyte, []):
                found[term.analyte].append(name)
    out = {k: tuple(v) for k, v in found.items()}
    _french_cache[id(catalogue)] = (catalogue, out)
    return out


def _ucum_readings(unit: str) -> list[str]:
    """Every UCUM reading of a unit as written: "UI/L" and "[IU]/L" are an enzyme's U/L or
    a hormone's [IU]/L (UCUM synonyms as labs use them), "G/L" a count or a mass."""
    readings: list[str] = []
    for prop in (None, "CCnc", "ACnc", "NCnc", "MCnc"):
        try:
            ucum = normalise_unit(unit, prop)
        except UnitError:
            return []
        if ucum not in readings:
            readings.append(ucum)
    return readings


def suggest(
    text: str,
    *,
    catalogue: Catalogue,
    unit: str | None = None,
    specimen: str | None = None,
    code: str | None = None,
    limit: int = 5,
) -> list[Suggestion]:
    """Best LOINC candidates for a local label (and code), unit and specimen, best first.

    A LOINC-style label (``parse_axes``) is scored on its component, and the axes it states
    (property, system, scale, method) weigh like the unit does.
    """
    _, specimens = _synonyms()
    axes = parse_axes(text) if text else None
    label_text = axes.component if axes is not None else text
    query_text = fold(" ".join(x for x in (label_text, code or "") if x))
    query = _tokens(query_text)
    plain = _tokens(label_text)
    plain_text = fold(label_text)
    code_text = fold(code) if code else ""
    wanted_system = (axes.system if axes is not None and axes.system else
                     _specimen(fold(text), specimen, specimens))
    # A specimen the label names (an axis, a word such as "urinaire", or ``specimen``) rules
    # out codes of another system: urine counts never rank blood codes.
    stated_system = wanted_system is not None
    if wanted_system is not None and axes is None:
        # the specimen word is not part of the analyte's name: "Créatinine urinaire"
        said = {w for w in specimens.get(wanted_system, []) if " " not in w}
        kept = tuple(t for t in plain if t not in said)
        if kept:
            plain, plain_text = kept, " ".join(kept)
    readings = _ucum_readings(unit) if unit and unit.strip() else []
    french = _french_components(catalogue)
    scored: list[Suggestion] = []
    for term in catalogue:
        if stated_system and not _system_compatible(wanted_system, term.system):
            continue  # the label says urine: a blood code is another analyte
        names = _names(term) + french.get(term.analyte, ())
        label = max(
            _label_score(query, query_text, names),
            _label_score(plain, plain_text, names),
            1.0 if code_text and code_text in names else 0.0,
        )
        if label <= 0:
            continue
        parts = {"label": round(W_LABEL * label, 3)}
        if readings:
            fits = any(unit_matches_property(u, term.property) for u in readings)
            parts["unit"] = W_UNIT_MATCH if fits else W_UNIT_CLASH
        if axes is not None and axes.property is not None:
            parts["property"] = (W_PROPERTY_MATCH if term.property == axes.property
                                 else W_PROPERTY_CLASH)
        if wanted_system is not None:
            same = term.system == wanted_system or (
                wanted_system in ("Ser", "Plas") and term.system == "Ser/Plas")
            if stated_system:
                parts["specimen"] = W_SYSTEM_MATCH if same else W_SYSTEM_CLASH
            else:
                parts["specimen"] = W_SPECIMEN_MATCH if same else W_SPECIMEN_CLASH
        if axes is not None and axes.scale is not None and term.scale != axes.scale:
            parts["scale"] = W_SCALE_CLASH
        if axes is not None and axes.method and term.method == axes.method:
            parts["method"] = W_METHOD_MATCH
        elif axes is not None and axes.method == "" and term.method:
            parts["method"] = W_METHOD_UNSAID
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
