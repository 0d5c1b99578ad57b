"""Mapping files: validation with line numbers, lookup, and accept_mapping."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loinc.catalogue import Catalogue
from mappings.loader import (
    MappingError,
    accept_mapping,
    load_mapping_file,
    load_mappings,
)

from .conftest import MAPPINGS

GOOD = """\
# demo lab
sender: LAB-A
codes:
  - {code: GLY, loinc: 2345-7, unit: g/L}   # glucose
  - {code: CREA, loinc: 2160-0}
"""


def _write(tmp_path: Path, text: str, name: str = "lab.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _errors(path: Path, catalogue: Catalogue | None = None) -> list[str]:
    with pytest.raises(MappingError) as info:
        load_mapping_file(path, catalogue=catalogue)
    return [str(i) for i in info.value.issues]


def test_shipped_mapping_files_are_valid(catalogue: Catalogue) -> None:
    mappings = load_mappings(MAPPINGS, catalogue=catalogue)
    assert len(mappings) == 120  # 3 laboratories x 40 tests
    assert {s for s, _lab in mappings.senders()} == {
        "LABO-BIO-PARIS15",
        "CERBALLIANCE-IDF-DEMO",
        "BIOGROUP-VAL-DE-MARNE-DEMO",
    }


def test_good_file_loads(tmp_path: Path, catalogue: Catalogue) -> None:
    entries = load_mapping_file(_write(tmp_path, GOOD), catalogue=catalogue)
    assert [(e.code, e.coding_system, e.loinc, e.unit) for e in entries] == [
        ("GLY", "L", "2345-7", "g/L"),
        ("CREA", "L", "2160-0", None),
    ]
    assert entries[1].source.endswith("lab.yaml:5")


def test_bad_loinc_format_has_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("2160-0", "2160-00"))
    assert _errors(path) == [f"{path}:5: '2160-00' is not a LOINC code (expected NNNNN-C)"]
    # YAML reads 2160_0 as the integer 21600: still reported as a bad LOINC code
    path = _write(tmp_path, GOOD.replace("2160-0", "2160_0"), "int.yaml")
    assert _errors(path) == [f"{path}:5: 21600 is not a LOINC code (expected NNNNN-C)"]


def test_wrong_check_digit_has_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("2345-7", "2354-7"))
    assert _errors(path) == [f"{path}:4: LOINC 2354-7: wrong check digit"]


def test_unknown_key_has_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("{code: CREA,", "{code: CREA, unti: mg/L,"))
    assert _errors(path) == [f"{path}:5: unknown key 'unti'"]
    path = _write(tmp_path, "senderr: X\n" + GOOD, "top.yaml")
    assert f"{path}:1: unknown key 'senderr'" in _errors(path)


def test_duplicate_code_has_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + "  - {code: GLY, loinc: 14749-6}\n")
    assert _errors(path) == [f"{path}:6: duplicate code 'GLY' (first at line 4)"]


def test_duplicate_yaml_key_and_syntax_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "sender: A\nsender: B\ncodes: []\n")
    (error,) = _errors(path)
    assert error.startswith(f"{path}:2: ")
    path = _write(tmp_path, "sender: A\ncodes: [\n", "broken.yaml")
    (error,) = _errors(path)
    assert error.startswith(f"{path}:")


def test_unknown_loinc_and_unit(tmp_path: Path, catalogue: Catalogue) -> None:
    text = GOOD.replace("2160-0}", "8310-5}").replace("unit: g/L", "unit: furlongs")
    path = _write(tmp_path, text)
    errors = _errors(path, catalogue)
    assert (
        f"{path}:5: LOINC 8310-5 is not in the catalogue (load the full LOINC release?)" in errors
    )
    assert any(e.startswith(f"{path}:4: unit 'furlongs'") for e in errors)


def test_lookup_prefers_the_performing_lab_file(tmp_path: Path, catalogue: Catalogue) -> None:
    _write(tmp_path, GOOD)
    _write(
        tmp_path,
        "sender: LAB-A\nperforming_lab: SITE-2\ncodes:\n  - {code: GLY, loinc: 14749-6}\n",
        "b.yaml",
    )
    mappings = load_mappings(tmp_path, catalogue=catalogue)
    assert mappings.lookup("LAB-A", "GLY").loinc == "2345-7"  # type: ignore[union-attr]
    assert mappings.lookup("LAB-A", "GLY", "L", "SITE-2").loinc == "14749-6"  # type: ignore[union-attr]
    assert mappings.lookup("LAB-A", "CREA", "", "SITE-2").loinc == "2160-0"  # type: ignore[union-attr]
    assert mappings.lookup("LAB-A", "GLY", "99ZZZ") is None
    assert mappings.lookup("LAB-B", "GLY") is None


def test_accept_mapping_appends_validates_and_keeps_comments(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    path = _write(tmp_path, GOOD)
    written = accept_mapping(tmp_path, "LAB-A", "VITD", "L", "1989-3", "ng/mL", catalogue=catalogue)
    assert written == path
    text = path.read_text(encoding="utf-8")
    assert "# demo lab" in text and "# glucose" in text
    entries = load_mapping_file(path, catalogue=catalogue)
    assert ("VITD", "1989-3", "ng/mL") in [(e.code, e.loinc, e.unit) for e in entries]
    # same code again replaces, never duplicates
    accept_mapping(tmp_path, "LAB-A", "VITD", "L", "62292-8", catalogue=catalogue)
    entries = load_mapping_file(path, catalogue=catalogue)
    assert [e.loinc for e in entries if e.code == "VITD"] == ["62292-8"]


def test_accept_mapping_refuses_a_bad_code_and_leaves_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    with pytest.raises(MappingError):
        accept_mapping(tmp_path, "LAB-A", "X", "L", "1234-5")
    assert path.read_text(encoding="utf-8") == GOOD


def test_accept_mapping_creates_a_file_for_a_new_sender(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    shutil.copy(MAPPINGS / "labo-bio-paris15.yaml", tmp_path)
    path = accept_mapping(tmp_path, "NEW LAB", "K", "", "2823-3", catalogue=catalogue)
    assert path.name == "new-lab.yaml"
    mappings = load_mappings(tmp_path, catalogue=catalogue)
    assert mappings.lookup("NEW LAB", "K").loinc == "2823-3"  # type: ignore[union-attr]


@pytest.mark.parametrize("layout", [
    "sender: LAB-A\ncodes:\n  - {code: \"GLY\", loinc: 2345-7}   # glucose\n"
    "  - {code: \"CREA\", loinc: 2160-0, text: \"Créatinine\"}\n",
    "sender: LAB-A\ncodes:\n- {code: GLY, loinc: 2345-7}\n- {code: CREA, loinc: 2160-0}\n",
    "sender: LAB-A\ncodes:\n    -   code: GLY\n        loinc: 2345-7\n",
    "# lab A\nsender: LAB-A\ncodes:\n  - code: GLY\n    loinc: 2345-7\n",
])
def test_accept_mapping_keeps_the_file_layout(tmp_path: Path, catalogue: Catalogue,
                                               layout: str) -> None:
    """Issue #16: accepting one code used to re-indent every line of the file; now the only
    change is the line added (or the line replaced)."""
    path = _write(tmp_path, layout)
    accept_mapping(tmp_path, "LAB-A", "K", "L", "2823-3", catalogue=catalogue)
    after = path.read_text(encoding="utf-8").splitlines()
    before = layout.splitlines()
    assert after[:len(before)] == before
    [added] = after[len(before):]
    assert "K" in added and "2823-3" in added
    indent = next(ln for ln in before if ln.lstrip().startswith("-"))
    assert added[:len(added) - len(added.lstrip())] == indent[:len(indent) - len(indent.lstrip())]
    if '"GLY"' in layout:
        assert '"K"' in added  # quoted like its neighbours

    # Replacing an entry rewrites that line alone, and keeps the label the operator wrote.
    accept_mapping(tmp_path, "LAB-A", "CREA", "L", "2160-0", "mg/dL", catalogue=catalogue)
    again = path.read_text(encoding="utf-8").splitlines()
    changed = [(a, b) for a, b in zip(after, again, strict=False) if a != b]
    if any("CREA" in ln for ln in before):
        assert len(again) == len(after) and len(changed) == 1
        assert "mg/dL" in changed[0][1]
        if "Créatinine" in layout:
            assert "Créatinine" in changed[0][1]
