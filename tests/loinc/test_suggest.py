"""Suggestion ranking: deterministic, explained, and measured on a labelled set."""

from __future__ import annotations

import csv

from loinc.catalogue import Catalogue
from loinc.suggest import fold, suggest

from .conftest import DATA


def test_gly_in_grams_per_litre_ranks_glucose_mass_first(catalogue: Catalogue) -> None:
    ranked = suggest("GLY", unit="g/L", catalogue=catalogue)
    assert ranked[0].loinc == "2345-7"
    assert set(ranked[0].components) == {"label", "unit", "prior"}
    assert "14749-6" not in [s.loinc for s in ranked[:3]]  # moles code clashes with g/L


def test_unit_decides_the_property(catalogue: Catalogue) -> None:
    assert suggest("Glycémie", unit="mmol/L", catalogue=catalogue)[0].loinc == "14749-6"
    assert suggest("CREAT", unit="µmol/L", catalogue=catalogue)[0].loinc == "14682-9"
    assert suggest("PLQ", unit="G/L", catalogue=catalogue)[0].loinc == "777-3"


def test_specimen_and_accents(catalogue: Catalogue) -> None:
    assert fold("Créatinine  Urinaire!") == "creatinine urinaire"
    assert suggest("Creatinine", unit="mmol/L", specimen="urine", catalogue=catalogue)[0].loinc == (
        "14683-7"
    )


def test_ranking_is_deterministic(catalogue: Catalogue) -> None:
    first = suggest("Glycémie", unit="g/L", catalogue=catalogue, limit=10)
    assert first == suggest("Glycémie", unit="g/L", catalogue=catalogue, limit=10)
    assert [s.score for s in first] == sorted((s.score for s in first), reverse=True)


def test_quality_on_the_labelled_set(catalogue: Catalogue) -> None:
    """Top-1 / top-5 on >= 100 local labels (figures recorded in docs/loinc.md)."""
    with (DATA / "suggest_labelled.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 100
    top1 = top5 = 0
    for row in rows:
        ranked = [s.loinc for s in suggest(row["label"], unit=row["unit"], catalogue=catalogue)]
        top1 += ranked[:1] == [row["expected"]]
        top5 += row["expected"] in ranked[:5]
    assert top1 / len(rows) >= 0.80, (top1, len(rows))
    assert top5 / len(rows) >= 0.95, (top5, len(rows))
