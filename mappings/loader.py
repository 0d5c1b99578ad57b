"""Per-sender mapping files: local laboratory code → LOINC, validated with line numbers.

One YAML file per sending laboratory (MSH-4), optionally narrowed to one performing laboratory
(OBX-23.1, else OBX-15.1). Files are checked against ``schema.json`` (JSON Schema) and then for
what a schema cannot say: the LOINC check digit, duplicate local codes, LOINC codes missing from
the catalogue, units nobody can read. Errors carry ``file:line`` so an operator can fix them.
ruamel.yaml keeps comments when ``accept_mapping`` writes a new entry.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from loinc.catalogue import Catalogue, is_valid_loinc_code
from loinc.units import UnitError, normalise_unit

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"
MAPPINGS_DIR = Path(__file__).resolve().parent
DEFAULT_CODING_SYSTEM = "L"


@dataclass(frozen=True, slots=True)
class MappingIssue:
    path: str
    line: int | None  # 1-based
    message: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.message}"
            if self.line
            else f"{self.path}: {self.message}"
        )


class MappingError(ValueError):
    """One or more problems in mapping files; ``issues`` lists them with their lines."""

    def __init__(self, issues: list[MappingIssue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


@dataclass(frozen=True, slots=True)
class MappingEntry:
    sender: str
    performing_lab: str | None
    code: str
    coding_system: str
    loinc: str
    unit: str | None = None
    text: str = ""
    source: str = ""  # file:line, for provenance


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 100
    return yaml


def _layout(source: str) -> dict[str, int]:
    """The file's own indentation, so that writing one entry leaves every other line as the
    operator wrote it (ruamel's defaults would re-indent every list item)."""
    from ruamel.yaml.util import load_yaml_guess_indent

    mapping = 2
    previous: tuple[int, str] | None = None
    for line in source.splitlines():
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith(("#", "-")):
            continue
        depth = len(line) - len(stripped)
        if previous and previous[1].rstrip().endswith(":") and depth > previous[0]:
            mapping = depth - previous[0]
            break
        previous = (depth, stripped)
    try:
        _, sequence, offset = load_yaml_guess_indent(source)
    except Exception:  # an unreadable file is reported by the parse that follows
        return {"mapping": mapping, "sequence": 2, "offset": 0}
    if offset is None:
        return {"mapping": mapping, "sequence": 2, "offset": 0}
    return {"mapping": mapping, "sequence": max(sequence, offset + 2), "offset": offset}


_SCHEMA: dict[str, Any] | None = None


def _schema() -> dict[str, Any]:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return _SCHEMA


def _line_of(node: Any, path: Iterable[Any]) -> int | None:
    """1-based line of the node at ``path`` inside a ruamel document (closest known parent)."""
    line: int | None = None
    current = node
    for key in path:
        try:
            if isinstance(current, CommentedMap) and key in current:
                line = current.lc.key(key)[0] + 1
            elif isinstance(current, CommentedSeq) and isinstance(key, int):
                line = current.lc.item(key)[0] + 1
            current = current[key]
        except (KeyError, IndexError, TypeError, AttributeError):
            break
    if line is None and hasattr(node, "lc"):
        line = node.lc.line + 1
    return line


def _entry_line(doc: Any, index: int, key: str | None = None) -> int | None:
    return _line_of(doc, ["codes", index] + ([key] if key else []))


def validate_document(
    doc: Any, path: str, *, catalogue: Catalogue | None = None
) -> list[MappingIssue]:
    """All problems of one parsed mapping document (empty list when valid)."""
    issues: list[MappingIssue] = []
    validator = jsonschema.Draft202012Validator(_schema())
    plain = json.loads(json.dumps(doc, default=str))
    for error in sorted(validator.iter_errors(plain), key=lambda e: list(e.absolute_path)):
        where = list(error.absolute_path)
        message = error.message
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            message = f"unknown key {', '.join(repr(e) for e in extra)}"
            if extra:
                where = where + [extra[0]]
        elif where and where[-1] == "loinc":
            message = f"{error.instance!r} is not a LOINC code (expected NNNNN-C)"
        issues.append(MappingIssue(path, _line_of(doc, where), message))
    if issues or not isinstance(doc, dict):
        return issues
    default_system = doc.get("coding_system", DEFAULT_CODING_SYSTEM)
    seen: dict[tuple[str, str], int | None] = {}
    for index, item in enumerate(doc["codes"]):
        loinc = str(item["loinc"])
        key = (str(item["code"]), str(item.get("system", default_system)))
        if not is_valid_loinc_code(loinc):
            issues.append(
                MappingIssue(
                    path, _entry_line(doc, index, "loinc"), f"LOINC {loinc}: wrong check digit"
                )
            )
        elif catalogue is not None and loinc not in catalogue:
            issues.append(
                MappingIssue(
                    path,
                    _entry_line(doc, index, "loinc"),
                    f"LOINC {loinc} is not in the catalogue (load the full LOINC release?)",
                )
            )
        line = _entry_line(doc, index, "code")
        if key in seen:
            issues.append(
                MappingIssue(path, line, f"duplicate code {key[0]!r} (first at line {seen[key]})")
            )
        else:
            seen[key] = line
        if "unit" in item:
            term = catalogue.get(loinc) if catalogue is not None else None
            try:
                normalise_unit(str(item["unit"]), term.property if term else None)
            except UnitError as exc:
                issues.append(MappingIssue(path, _entry_line(doc, index, "unit"), str(exc)))
    return issues


def _parse(text: str, path: str) -> Any:
    try:
        return _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise MappingError([MappingIssue(path, line, exc.problem or str(exc))]) from None


def load_mapping_file(path: Path, *, catalogue: Catalogue | None = None) -> list[MappingEntry]:
    """Read and validate one mapping file; raises ``MappingError`` listing every problem."""
    name = str(path)
    doc = _parse(path.read_text(encoding="utf-8"), name)
    issues = validate_document(doc, name, catalogue=catalogue)
    if issues:
        raise MappingError(issues)
    default_system = str(doc.get("coding_system", DEFAULT_CODING_SYSTEM))
    lab = doc.get("performing_lab")
    return [
        MappingEntry(
            sender=str(doc["sender"]),
            performing_lab=str(lab) if lab else None,
            code=str(item["code"]),
            coding_system=str(item.get("system", default_system)),
            loinc=str(item["loinc"]),
            unit=str(item["unit"]) if "unit" in item else None,
            text=str(item.get("text", "")),
            source=f"{name}:{_entry_line(doc, index)}",
        )
        for index, item in enumerate(doc["codes"])
    ]


class MappingSet:
    """Every sender's mappings, looked up by (sender, performing lab, code, coding system)."""

    def __init__(self, entries: Iterable[MappingEntry] = ()) -> None:
        self._index: dict[tuple[str, str | None], dict[tuple[str, str], MappingEntry]] = {}
        for entry in entries:
            table = self._index.setdefault((entry.sender, entry.performing_lab), {})
            table[(entry.code, entry.coding_system)] = entry

    def __len__(self) -> int:
        return sum(len(t) for t in self._index.values())

    def senders(self) -> list[tuple[str, str | None]]:
        return sorted(self._index, key=lambda k: (k[0], k[1] or ""))

    def lookup(
        self, sender: str, code: str, coding_system: str = "", performing_lab: str = ""
    ) -> MappingEntry | None:
        """The mapping for a local code; a performing-lab file wins over the sender's file.

        An OBX-3 without a coding system matches the file's default system (local codes).
        """
        keys: list[tuple[str, str | None]] = []
        if performing_lab:
            keys.append((sender, performing_lab))
        keys.append((sender, None))
        for key in keys:
            table = self._index.get(key)
            if not table:
                continue
            found = table.get((code, coding_system)) or (
                None if coding_system else self._default(table, code)
            )
            if found:
                return found
        return None

    @staticmethod
    def _default(table: dict[tuple[str, str], MappingEntry], code: str) -> MappingEntry | None:
        return table.get((code, DEFAULT_CODING_SYSTEM)) or next(
            (e for (c, _s), e in table.items() if c == code), None
        )


def load_mappings(
    directory: Path = MAPPINGS_DIR, *, catalogue: Catalogue | None = None
) -> MappingSet:
    """Load every ``*.yaml`` in ``directory``; all files' problems are reported together."""
    entries: list[MappingEntry] = []
    issues: list[MappingIssue] = []
    owners: dict[tuple[str, str | None], str] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            file_entries = load_mapping_file(path, catalogue=catalogue)
        except MappingError as exc:
            issues.extend(exc.issues)
            continue
        if file_entries:
            key = (file_entries[0].sender, file_entries[0].performing_lab)
            if key in owners:
                issues.append(
                    MappingIssue(str(path), None, f"sender {key[0]} also in {owners[key]}")
                )
                continue
            owners[key] = str(path)
        entries.extend(file_entries)
    if issues:
        raise MappingError(issues)
    return MappingSet(entries)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "sender"


def find_mapping_file(
    directory: Path, sender: str, performing_lab: str | None = None
) -> Path | None:
    """The file holding ``sender``'s (and ``performing_lab``'s) mappings, if any."""
    for path in sorted(directory.glob("*.yaml")):
        doc = _parse(path.read_text(encoding="utf-8"), str(path))
        if isinstance(doc, dict) and doc.get("sender") == sender:
            if (doc.get("performing_lab") or None) == (performing_lab or None):
                return path
    return None


def accept_mapping(
    mapping_dir: Path,
    sender: str,
    code: str,
    coding_system: str,
    loinc: str,
    unit: str | None = None,
    *,
    performing_lab: str | None = None,
    text: str | None = None,
    catalogue: Catalogue | None = None,
) -> Path:
    """Write ``code → loinc`` into the sender's mapping file and return the file.

    Used by ``parcours mappings accept``. The file is created when the sender has none; an
    existing entry for the same code is replaced. The whole file is validated before it is
    written (atomically), so a bad LOINC code never reaches the disk; comments are kept.
    """
    mapping_dir = Path(mapping_dir)
    path = find_mapping_file(mapping_dir, sender, performing_lab)
    if path is None:
        name = _slug(sender) + (f"--{_slug(performing_lab)}" if performing_lab else "")
        path = mapping_dir / f"{name}.yaml"
        header = f"# Mappings for {sender}: local code -> LOINC (see docs/loinc.md)\n"
        lab_line = f"performing_lab: {json.dumps(performing_lab)}\n" if performing_lab else ""
        source = f"{header}sender: {json.dumps(sender)}\n{lab_line}codes: []\n"
    else:
        source = path.read_text(encoding="utf-8")
    yaml = _yaml()
    yaml.indent(**_layout(source))
    doc = _parse(source, str(path))
    default_system = str(doc.get("coding_system", DEFAULT_CODING_SYSTEM))
    system = coding_system or default_system
    entry = CommentedMap()
    entry["code"] = code
    if system != default_system:
        entry["system"] = system
    entry["loinc"] = loinc
    if unit:
        entry["unit"] = unit
    if text:
        entry["text"] = text
    entry.fa.set_flow_style()
    codes = doc.get("codes")
    if codes is None or not isinstance(codes, list):
        codes = CommentedSeq()
        doc["codes"] = codes
    if isinstance(codes, CommentedSeq) and not codes:
        codes.fa.set_block_style()
    quoted = [item for item in codes if isinstance(item, dict)
              and isinstance(item.get("code"), DoubleQuotedScalarString)]
    if quoted:  # the file quotes its codes and labels: so does the new line
        for key in ("code", "text"):
            if key in entry:
                entry[key] = DoubleQuotedScalarString(entry[key])
    for index, item in enumerate(codes):
        if str(item.get("code")) == code and str(item.get("system", default_system)) == system:
            if "text" not in entry and "text" in item:
                entry["text"] = item["text"]  # the label the operator wrote stays
            codes[index] = entry
            break
    else:
        codes.append(entry)
    issues = validate_document(doc, str(path), catalogue=catalogue)
    if issues:
        raise MappingError(issues)
    buffer = io.StringIO()
    yaml.dump(doc, buffer)
    handle, tmp = tempfile.mkstemp(dir=mapping_dir, prefix=".mapping-", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(buffer.getvalue())
    os.replace(tmp, path)
    return path
