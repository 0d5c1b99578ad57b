"""An XML parser that hostile documents cannot turn against us.

No network access, no entity expansion (billion laughs), no DTD loading, bounded size: a
document from outside is data, never instructions to the parser.
"""

from __future__ import annotations

from lxml import etree

MAX_DOCUMENT_BYTES = 32 * 1024 * 1024


class UnsafeXML(ValueError):
    """The document was refused: too large, a DTD or entity declarations, or not well-formed."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
    )


def parse(data: bytes, max_bytes: int = MAX_DOCUMENT_BYTES) -> etree._Element:
    if len(data) > max_bytes:
        raise UnsafeXML(f"document of {len(data)} bytes exceeds the limit of {max_bytes}")
    head = data[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in data[:65536].lower():
        raise UnsafeXML("documents with a DOCTYPE or entity declarations are refused")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        line = exc.position[0] if exc.position else 0
        raise UnsafeXML(f"not well-formed XML (line {line}): {exc.msg}") from None
    return root
