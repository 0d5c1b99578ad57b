"""routes.yaml validation: every kind of error on the right line, with a plain sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ConfigError, load_file, load_text

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
version: 1
channels:
  main:
    type: mllp
    port: 2575
destinations:
  out:
    type: file
    path: /tmp/out
routes:
  - name: r1
    when:
      message_type: ADT
    to: [out]
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[tuple[int, int, str]]:
    with pytest.raises(ConfigError) as info:
        load_text(text, file="routes.yaml", env=env or {})
    return [(p.line, p.column, p.message) for p in info.value.problems]


def test_default_file_is_valid() -> None:
    cfg = load_file(ROOT / "routes.yaml", env={"PARCOURS_HOME": "/tmp/x"})
    assert cfg.channels["main"].port == 2575
    assert {r.name for r in cfg.routes} >= {"adt-movements", "lab-results"}


def test_base_is_valid() -> None:
    cfg = load_text(BASE, env={})
    assert cfg.routes[0].to == ("out",) and cfg.routes[0].line == 11


def test_yaml_syntax_error_has_position() -> None:
    [(line, _col, msg)] = problems(BASE.replace("    to: [out]", "    to: [out"))
    assert line == 15 and "YAML syntax" in msg


def test_unknown_key_at_each_level() -> None:
    assert problems("versio: 1\n" + BASE.split("\n", 1)[1])[0][:2] == (1, 1)
    found = problems(BASE.replace("    port: 2575", "    prot: 2575"))  # in line order
    assert found[1][:2] == (5, 5) and "unknown key 'prot'" in found[1][2]
    assert "allowed: " in found[1][2] and "port" in found[1][2]
    assert found[0][:2] == (3, 3) and "'port' is a required property" in found[0][2]
    [(line, col, msg)] = problems(BASE.replace("    to: [out]", "    to: [out]\n    too: 1"))
    assert line == 15 and "'too'" in msg
    [(line, _, msg)] = problems(BASE.replace("      message_type: ADT", "      msg_type: ADT"))
    assert line == 13 and "msg_type" in msg


def test_wrong_types_and_missing_required() -> None:
    [(line, _, msg)] = problems(BASE.replace("port: 2575", "port: 70000"))
    assert line == 5 and "70000" in msg
    [(line, _, msg)] = problems(BASE.replace("    path: /tmp/out\n", ""))
    assert line == 7 and "'path' is a required property" in msg
    [(line, _, msg)] = problems(BASE.replace("    type: file", "    type: ftp"))
    assert line == 8 and "ftp" in msg and "mllp" in msg


def test_undefined_references() -> None:
    [(line, col, msg)] = problems(BASE.replace("to: [out]", "to: [out, nowhere]"))
    assert line == 14 and "undefined destination 'nowhere'" in msg
    [(line, _, msg)] = problems(BASE.replace("  - name: r1\n", "  - name: r1\n    from: [lab]\n"))
    assert line == 12 and "undefined channel 'lab'" in msg
    [(line, _, msg)] = problems(
        BASE.replace("    to: [out]", "    transform: [nope]\n    to: [out]"))
    assert line == 14 and "unknown transformer 'nope'" in msg
    [(line, _, msg)] = problems(
        BASE.replace("    to: [out]", "    transform: ['json:nothing_here']\n    to: [out]"))
    assert line == 14 and "no callable" in msg


def test_bad_condition_duplicate_names_and_ports() -> None:
    [(line, _, msg)] = problems(
        BASE.replace("      message_type: ADT", "      fields: ['PV1-2 ~= I']"))
    assert line == 13 and "cannot read condition" in msg
    dup = BASE + "  - name: r1\n    to: [out]\n"
    [(line, _, msg)] = problems(dup)
    assert line == 15 and "used twice" in msg
    two = BASE.replace("destinations:", "  other:\n    type: mllp\n    port: 2575\ndestinations:")
    [(line, _, msg)] = problems(two)
    assert line == 8 and "both listen on port 2575" in msg


def test_environment_interpolation() -> None:
    text = BASE.replace("port: 2575", "port: ${MLLP_PORT:-2600}").replace(
        "path: /tmp/out", "path: ${OUT_DIR}/files")
    cfg = load_text(text, env={"OUT_DIR": "/srv"})
    assert cfg.channels["main"].port == 2600  # typed: a number, not the string "2600"
    assert cfg.destinations["out"]["path"] == "/srv/files"
    assert load_text(text, env={"OUT_DIR": "/srv", "MLLP_PORT": "2700"}).channels["main"].port \
        == 2700
    [(line, _, msg)] = problems(text)
    assert line == 9 and "OUT_DIR is not set" in msg


def test_several_problems_are_all_reported() -> None:
    text2 = BASE.replace("to: [out]", "to: [x, y]")
    assert [f[0] for f in problems(text2)] == [14, 14]


def test_schema_errors_do_not_hide_the_reference_checks() -> None:
    """Issue #16: an unknown transformer used to show only once the schema errors were fixed;
    one pass now reports both kinds, in the order of the file."""
    text = (BASE.replace("port: 2575", "port: -1")
            .replace("    to: [out]", "    transform: [nope]\n    to: [x]")
            + "  - name: r2\n    from: [lab]\n    colour: red\n    to: [out]\n")
    found = problems(text)
    assert [(line, col) for line, col, _ in found] == [(5, 5), (14, 17), (15, 10), (17, 12),
                                                       (18, 5)]
    assert "-1" in found[0][2]
    assert "unknown transformer 'nope'" in found[1][2]
    assert "undefined destination 'x'" in found[2][2]
    assert "undefined channel 'lab'" in found[3][2]
    assert "unknown key 'colour'" in found[4][2]


@pytest.mark.parametrize("route", [
    "  - just a string\n",
    "  - name: r2\n    to: out\n",
    "  - name: r2\n    to: [[out]]\n    transform: nope\n",
    "  - name: [r2]\n    to: [out]\n    when: [ADT]\n",
    "  - to: [missing]\n",
])
def test_malformed_routes_get_problems_not_a_crash(route: str) -> None:
    found = problems(BASE + route)
    assert found and all(line >= 15 for line, _, _ in found), found
