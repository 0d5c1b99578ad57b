"""The LOINC subset and the loader of the official release CSV."""

from __future__ import annotations

import pytest

from loinc.canonical import CanonicalPolicy, load_molar_masses
from loinc.catalogue import (
    Catalogue,
    CatalogueError,
    is_valid_loinc_code,
    load_catalogue,
    load_loinc_release,
)

from .conftest import DATA


def test_subset_size_and_codes(catalogue: Catalogue) -> None:
    assert len(catalogue) >= 300
    assert all(is_valid_loinc_code(t.code) for t in catalogue)
    categories = {t.category for t in catalogue}
    assert {"chemistry", "haematology", "haemostasis", "immunology", "urine"} <= categories
    assert {"blood gases", "serology"} <= categories


def test_french_names_come_from_ans_value_sets(catalogue: Catalogue) -> None:
    assert catalogue.get("2345-7").display_fr.startswith("Glucose [Masse/Volume]")  # type: ignore[union-attr]
    assert catalogue.get("14682-9").display_fr.startswith("Créatinine")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("code", "prop", "expected"),
    [
        ("2345-7", "SCnc", "14749-6"),
        ("2160-0", "SCnc", "14682-9"),
        ("3091-6", "SCnc", "22664-7"),
        ("3094-0", "SCnc", None),
        ("13457-7", "SCnc", "39469-2"),
        ("41653-7", "SCnc", "14743-9"),
    ],
)
def test_siblings_keep_every_axis_but_the_property(
    catalogue: Catalogue, code: str, prop: str, expected: str | None
) -> None:
    sibling = catalogue.sibling(catalogue.get(code), prop)  # type: ignore[arg-type]
    assert (sibling.code if sibling else None) == expected


def test_canonical_targets(catalogue: Catalogue) -> None:
    policy = CanonicalPolicy(catalogue)
    target = policy.target(catalogue.get("2345-7"))  # type: ignore[arg-type]
    assert (target.term.code, target.unit) == ("14749-6", "mmol/L")  # type: ignore[union-attr]
    target = policy.target(catalogue.get("6690-2"))  # type: ignore[arg-type]
    assert (target.term.code, target.unit) == ("6690-2", "10*9/L")  # type: ignore[union-attr]
    masses = load_molar_masses()
    assert masses["Glucose"].grams_per_mole == pytest.approx(180.156)
    assert all(m.source for m in masses.values())


def test_release_loader_reads_the_official_format() -> None:
    release = load_loinc_release(DATA / "Loinc_sample.csv", french_names={"718-7": "Hémoglobine"})
    # CLASSTYPE 2 (clinical) and DEPRECATED rows are left out by default
    assert sorted(t.code for t in release) == ["14682-9", "14749-6", "2160-0", "2345-7", "718-7"]
    glucose = release.get("2345-7")
    assert glucose is not None
    assert (glucose.component, glucose.property, glucose.system, glucose.scale) == (
        "Glucose",
        "MCnc",
        "Ser/Plas",
        "Qn",
    )
    assert glucose.example_ucum_unit == "mg/dL" and glucose.short_name == "Glucose SerPl-mCnc"
    assert release.get("718-7").display_fr == "Hémoglobine"  # type: ignore[union-attr]
    assert release.sibling(glucose, "SCnc").code == "14749-6"  # type: ignore[union-attr]
    everything = load_loinc_release(
        DATA / "Loinc_sample.csv", lab_only=False, include_deprecated=True
    )
    assert {"8310-5", "99999-5"} <= {t.code for t in everything}


def test_release_loader_refuses_other_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "Loinc.csv"
    path.write_text('"CODE","NAME"\n"1","x"\n', encoding="utf-8")
    with pytest.raises(CatalogueError, match="missing LOINC_NUM"):
        load_loinc_release(path)


def test_release_merges_under_the_subset(catalogue: Catalogue) -> None:
    merged = catalogue.merged(load_loinc_release(DATA / "Loinc_sample.csv"))
    assert len(merged) == len(catalogue)  # the sample adds nothing new to the subset
    assert merged.get("2345-7").display_fr  # type: ignore[union-attr]
    assert len(load_catalogue()) == len(catalogue)
