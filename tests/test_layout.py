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
