"""The project's one XML parser: what arrives from outside is data, never instructions.

Every XML parse in Parcours goes through this package (tests/test_layout.py checks that no
other module builds an lxml parser or calls ``etree.fromstring``/``etree.parse``). It sits
outside ``connectors/`` and ``transformers/`` so that both can import it without importing
each other or the engine.

Untrusted bytes (`parse`): CDA documents from MLLP (MDM^T02 OBX-5) and folders, SOAP
requests and responses, our own serialisations read back. The rules are enforced by the
parser and on what it produced, never by scanning bytes — a byte scan misses a DOCTYPE behind
a long comment or in UTF-16/UTF-32, which the parser decodes like any other document:

- no network (``no_network``), no DTD loading, no entity substitution (``resolve_entities``
  off), and a resolver that refuses every external resource the parser would fetch (file,
  http, external parameter entity) — so nothing is ever read even while parsing;
- after parsing, the document is refused if it had a document type declaration at all
  (``docinfo``: internal subset, public or system id), if any entity reference survived in
  the tree, or if it uses XInclude (XInclude 1.0 §3: an ``include`` element asks the
  processor to read another resource; we never process it, and a document that relies on it
  is not one we accept);
- a bounded size, and lxml's ``huge_tree`` off (libxml2's depth and text-node limits).

Shipped files (`parse_shipped`): schemas, value sets and schematrons that come with the
package. Same parser settings, but they are trusted and may import their neighbours, so
external loading stays with libxml2 (local files only, no network).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lxml import etree

MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
XINCLUDE_NAMESPACES = ("http://www.w3.org/2001/XInclude", "http://www.w3.org/2003/XInclude")


class UnsafeXML(ValueError):
    """The document was refused. ``reason`` is a stable code for logs and metrics
    (``too_large``, ``doctype``, ``entity``, ``xinclude``, ``external_resource``,
    ``not_well_formed``); the message says what and where, without document content."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _RefuseExternal(etree.Resolver):  # type: ignore[misc]
    """Called by libxml2 for every external resource it would load: we load none."""

    def resolve(self, system_url: str | None, public_id: str | None, context: Any) -> Any:
        raise UnsafeXML("external_resource", "the document refers to an external resource")


def _parser(*, refuse_external: bool) -> etree.XMLParser:
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
    )
    if refuse_external:
        parser.resolvers.add(_RefuseExternal())
    return parser


def parse(data: bytes, max_bytes: int = MAX_DOCUMENT_BYTES) -> etree._Element:
    """Parse untrusted bytes, or raise `UnsafeXML` saying why they were refused."""
    if len(data) > max_bytes:
        raise UnsafeXML(
            "too_large", f"document of {len(data)} bytes exceeds the limit of {max_bytes}"
        )
    try:
        root = etree.fromstring(data, _parser(refuse_external=True))
    except UnsafeXML:
        raise
    except etree.XMLSyntaxError as exc:
        line = exc.position[0] if exc.position else 0
        raise UnsafeXML("not_well_formed", f"not well-formed XML (line {line}): {exc.msg}"
                        ) from None
    except ValueError as exc:  # e.g. a str with an encoding declaration
        raise UnsafeXML("not_well_formed", f"not well-formed XML: {exc}") from None
    check(root)
    return root


def parse_shipped(path: str | Path, *, remove_comments: bool = False) -> etree._Element:
    """Parse a file shipped with Parcours (schema, value set): trusted, may import siblings
    (an XSD's xs:include/xs:import are read relative to the file, hence the path)."""
    parser = _parser(refuse_external=False)
    if remove_comments:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                                 huge_tree=False, remove_comments=True)
    return etree.parse(str(path), parser).getroot()


def check(root: etree._Element) -> None:
    """Refuse a parsed document that declared a DTD, kept an entity reference or uses
    XInclude. Public so that a tree built elsewhere (e.g. by a test) can be checked too."""
    info = root.getroottree().docinfo
    if info.internalDTD is not None or info.externalDTD is not None or info.doctype or (
        info.public_id or info.system_url
    ):
        raise UnsafeXML("doctype", "documents with a DOCTYPE (DTD, entity declarations) "
                                   "are refused")
    for node in root.iter(etree.Entity, etree.Element):
        if isinstance(node, etree._Entity):
            raise UnsafeXML("entity", f"entity reference on line {node.sourceline} refused")
        tag = node.tag
        if isinstance(tag, str) and tag.startswith("{") and (
            tag[1:].split("}", 1)[0] in XINCLUDE_NAMESPACES
        ):
            raise UnsafeXML("xinclude", f"XInclude element on line {node.sourceline} refused")


def copy(element: etree._Element) -> etree._Element:
    """A standalone copy of an element (its own document), e.g. to sign or validate it."""
    return parse(etree.tostring(element))
