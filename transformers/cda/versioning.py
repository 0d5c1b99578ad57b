"""Give a CDA document the version its feed decided: versionNumber, id and the RPLC parent.

Why here and not in the transformer: a transformer is pure (same message, same document), so
it cannot know how many versions of a report the DMP already holds — a second correction of
the same order must become version 3 replacing version 2, not a second "version 2". The feed
(the `dmp` destination) keeps that record and calls `renumber()` just before it sends.

Rules (CDA R2 §4.2.3.1, ClinicalDocument.setId/versionNumber and relatedDocument): every
version of a document shares the setId, carries its own id and a versionNumber, and a new
version names the one it replaces in `relatedDocument[@typeCode='RPLC']/parentDocument/id`.

The id scheme is the one `to_crbio` uses: `<setId extension>.v<version>.<rest>` under the
setId's root; the `.v<version>.` part is rewritten. Another scheme gets `.v<version>` appended
so that each version still has its own id.
"""

from __future__ import annotations

import re

from lxml import etree

V3 = "urn:hl7-org:v3"
_VERSIONED = re.compile(r"^(?P<set>.+)\.v(?P<version>\d+)\.(?P<rest>.+)$")
# ClinicalDocument children that follow relatedDocument (CDA R2 schema, POCD_MT000040).
_AFTER_RELATED = ("authorization", "componentOf", "component")


class NotVersionable(ValueError):
    """The document has no setId/id/versionNumber to renumber."""


def set_id(root: etree._Element) -> str:
    """`root^extension` of ClinicalDocument/setId ("" when absent)."""
    el = root.find(f"{{{V3}}}setId")
    if el is None or not el.get("root"):
        return ""
    ext = el.get("extension") or ""
    return f"{el.get('root')}^{ext}" if ext else el.get("root", "")


def version(root: etree._Element) -> int:
    el = root.find(f"{{{V3}}}versionNumber")
    try:
        return int(el.get("value", "")) if el is not None else 0
    except ValueError:
        return 0


def renumber(root: etree._Element, new_version: int, replaces: str) -> bytes:
    """The document as version `new_version`, replacing `replaces` ("root^extension"; "" for
    a first version: any relatedDocument RPLC is dropped). Returns the serialised bytes."""
    doc_id = root.find(f"{{{V3}}}id")
    set_el = root.find(f"{{{V3}}}setId")
    number = root.find(f"{{{V3}}}versionNumber")
    if doc_id is None or set_el is None or number is None:
        raise NotVersionable("the CDA needs id, setId and versionNumber to be renumbered")
    if new_version != version(root):
        ext = doc_id.get("extension") or ""
        set_ext = set_el.get("extension") or ""
        m = _VERSIONED.match(ext)
        if m and m.group("set") == set_ext:
            doc_id.set("extension", f"{set_ext}.v{new_version}.{m.group('rest')}")
        else:
            doc_id.set("extension", f"{ext}.v{new_version}" if ext else f"v{new_version}")
        number.set("value", str(new_version))
    for rel in root.findall(f"{{{V3}}}relatedDocument"):
        if rel.get("typeCode") == "RPLC":
            root.remove(rel)
    if replaces:
        parent_root, _, parent_ext = replaces.partition("^")
        rel = etree.Element(f"{{{V3}}}relatedDocument", typeCode="RPLC")
        parent = etree.SubElement(rel, f"{{{V3}}}parentDocument")
        pid = etree.SubElement(parent, f"{{{V3}}}id", root=parent_root)
        if parent_ext:
            pid.set("extension", parent_ext)
        following = next((c for c in root if isinstance(c.tag, str)
                          and etree.QName(c).localname in _AFTER_RELATED), None)
        if following is not None:
            following.addprevious(rel)
        else:
            root.append(rel)
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8")
