"""Safe XML parsing for what arrives from the network (SOAP requests and responses).

Same rules as transformers/cda/safe_xml.py — no DTD, no entities (XXE, billion laughs), no
network, bounded size — kept here because connectors do not import transformers (layout rule).
"""

from __future__ import annotations

from lxml import etree


class UnsafeXML(ValueError):
    pass


def parse(data: bytes, max_bytes: int) -> etree._Element:
    if len(data) > max_bytes:
        raise UnsafeXML(f"document of {len(data)} bytes exceeds the limit of {max_bytes}")
    if b"<!doctype" in data[:4096].lower() or b"<!entity" in data[:65536].lower():
        raise UnsafeXML("documents with a DOCTYPE or entity declarations are refused")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             dtd_validation=False, huge_tree=False)
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        line = exc.position[0] if exc.position else 0
        raise UnsafeXML(f"not well-formed XML (line {line}): {exc.msg}") from None
