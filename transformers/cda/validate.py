"""CDA R2 schema validation with the ANS extensions (CDA_extended.xsd).

Why a separate step from parsing: a document that fails the schema is still a document the
patient's care may need, so intake keeps it and reports the errors on the message (issue #7);
only the caller decides whether a failure blocks a destination (the DMP refuses such documents).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from safexml import parse, parse_shipped

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
CDA_SCHEMA = SCHEMA_DIR / "CDA_extended.xsd"
MAX_ERRORS = 200  # a broken document can produce thousands; the first ones say enough

_lock = threading.Lock()
_schema: etree.XMLSchema | None = None


@dataclass(frozen=True)
class SchemaError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ValidationReport:
    errors: list[SchemaError] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors

    def summary(self, limit: int = 5) -> str:
        head = "; ".join(str(e) for e in self.errors[:limit])
        more = len(self.errors) - limit
        return head + (f" (+{more} more)" if more > 0 else "")


def cda_schema() -> etree.XMLSchema:
    """Loaded once (about 0.3 s): the schema files import each other by relative path, so they
    are read from the project folder, never from the network."""
    global _schema
    with _lock:
        if _schema is None:
            _schema = etree.XMLSchema(parse_shipped(CDA_SCHEMA).getroottree())
        return _schema


def validate_cda(document: bytes | etree._Element) -> ValidationReport:
    """Validate against CDA R2 + ANS extensions; errors carry the line of the document.

    Bytes go through the safe parser first (no DTD, no entities, bounded size): a hostile
    document raises `UnsafeXML` instead of being validated.
    """
    root = parse(document) if isinstance(document, bytes) else document
    schema = cda_schema()
    with _lock:  # XMLSchema objects keep their error log: one validation at a time
        schema.validate(root)
        errors = [SchemaError(e.line, e.message) for e in list(schema.error_log)[:MAX_ERRORS]]
    return ValidationReport(errors)
