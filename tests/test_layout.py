"""The design brief's layout rule: connectors/, transformers/ and channels/ never import engine/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_engine_is_imported_only_by_the_engine() -> None:
    offenders = []
    for package in ("connectors", "transformers", "channels", "loinc", "mappings"):
        for path in (ROOT / package).rglob("*.py"):
            for mod in imported_modules(path):
                if mod == "engine" or mod.startswith("engine."):
                    offenders.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert offenders == []


def test_connectors_do_not_import_transformers_or_channels() -> None:
    offenders = []
    for path in (ROOT / "connectors").rglob("*.py"):
        for mod in imported_modules(path):
            if mod.split(".")[0] in ("transformers", "channels"):
                offenders.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert offenders == []


# lxml / ElementTree entry points that parse: only safexml/ may call them (issue #17).
_XML_PARSE_CALLS = {"fromstring", "parse", "XMLParser", "XML", "iterparse", "XMLPullParser",
                    "fromstringlist", "XMLID", "HTMLParser"}


def xml_parse_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in _XML_PARSE_CALLS
                and isinstance(node.value, ast.Name) and node.value.id in ("etree", "ET")):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} etree.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module in (
                "xml.etree.ElementTree", "xml.dom.minidom", "xml.sax", "defusedxml"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
        if isinstance(node, ast.Import) and any(
                a.name.startswith(("xml.etree", "xml.dom", "xml.sax")) for a in node.names):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports xml.*")
    return found


def test_every_xml_parse_goes_through_safexml() -> None:
    offenders = []
    for package in ("engine", "channels", "connectors", "transformers", "loinc", "mappings",
                    "monitoring"):
        for path in (ROOT / package).rglob("*.py"):
            offenders += xml_parse_calls(path)
    assert offenders == []


def test_safexml_imports_no_project_package() -> None:
    offenders = [f"{p.relative_to(ROOT)} imports {m}" for p in (ROOT / "safexml").rglob("*.py")
                 for m in imported_modules(p) if m.split(".")[0] in (
                     "engine", "channels", "connectors", "transformers")]
    assert offenders == []


# -- the HTTP side sees the engine through its port (engine/api/port.py) ----------------------

_HTTP_SIDE = ("api", "ui", "timeline", "fhir", "referrals")
# Parts of the engine the pages and APIs used to reach into; now behind the port's methods.
_BEHIND_THE_PORT = {"router", "runner", "bus", "leases", "lab", "worker", "committer",
                    "intake", "channels", "is_router"}


def test_the_http_side_sees_the_engine_only_through_its_port() -> None:
    offenders = []
    for package in _HTTP_SIDE:
        for path in (ROOT / "engine" / package).rglob("*.py"):
            rel = path.relative_to(ROOT)
            offenders += [f"{rel} imports engine.app" for m in imported_modules(path)
                          if m == "engine.app"]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Attribute) and node.attr in _BEHIND_THE_PORT
                        and isinstance(node.value, ast.Name) and node.value.id == "engine"):
                    offenders.append(f"{rel}:{node.lineno} engine.{node.attr}")
    assert offenders == []


def test_the_engine_implements_its_port() -> None:
    from engine.api.port import EngineView
    from engine.app import Engine

    wanted = set(EngineView.__annotations__) | {
        name for name, value in vars(EngineView).items()
        if callable(value) and not name.startswith("_")}
    tree = ast.parse((ROOT / "engine" / "app.py").read_text(encoding="utf-8"))
    assigned = {t.attr for node in ast.walk(tree) if isinstance(node, ast.Assign | ast.AnnAssign)
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                and t.value.id == "self"}
    missing = sorted(n for n in wanted if not hasattr(Engine, n) and n not in assigned)
    assert missing == []
    assert {"health", "replay", "retry", "routing_facts"} <= wanted  # the port is read right
