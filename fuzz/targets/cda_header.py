"""CDA header reading and safe XML (`safexml`, `transformers.cda.header`,
`transformers.events.cda`).

A bug is any exception other than `UnsafeXML` (refused document), `NotCDA` (not a
ClinicalDocument) and `EventError` (a document event cannot be made from it), or a document
accepted although it carries a DOCTYPE or an entity — whatever its encoding or wherever in
the file they are (the parser must never see them).
"""

from __future__ import annotations

from lxml import etree

from fuzz import seeds
from fuzz.harness import Harness, check
from safexml import UnsafeXML, parse
from transformers.cda.header import NotCDA, read_header
from transformers.events.cda import read_document
from transformers.events.common import EventError


def target(data: bytes) -> None:
    root = parse(data)
    tree = root.getroottree()
    check(not tree.docinfo.doctype and tree.docinfo.internalDTD is None,
          "a document with a DOCTYPE was accepted")
    check(not any(isinstance(node, etree._Entity) for node in root.iter()),
          "a document with an entity reference was accepted")
    header = read_header(root)
    check(isinstance(header.title, str), "title is not text")
    read_document(data)


HARNESS = Harness("cda_header", target, (UnsafeXML, NotCDA, EventError), seeds.cda_documents,
                  max_len=64 * 1024)
