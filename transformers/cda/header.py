"""The CDA header fields intake and the timeline need (HL7 CDA R2 §4.2)."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from transformers.hl7.header import INS_OIDS

NS = {"cda": "urn:hl7-org:v3"}


@dataclass(frozen=True)
class CDAHeader:
    document_id: str  # id/@root ^ id/@extension
    set_id: str
    version: str
    type_code: str  # code/@code (LOINC document type)
    type_system: str
    title: str
    effective_time: str
    confidentiality: str  # N / R / V
    patient_ids: tuple[tuple[str, str], ...]  # (root, extension)
    author: str
    custodian: str

    @property
    def ins(self) -> str | None:
        for root, ext in self.patient_ids:
            if root in INS_OIDS:
                return ext
        return None

    @property
    def patient_key(self) -> str | None:
        """Local id first, INS otherwise — the same preference as HL7 v2 intake."""
        for root, ext in self.patient_ids:
            if root not in INS_OIDS and ext:
                return f"{root}|{ext}"
        ins = self.ins
        return f"INS|{ins}" if ins else None


def _attr(root: etree._Element, path: str, attr: str) -> str:
    found = root.find(path, NS)
    return (found.get(attr) or "") if found is not None else ""


def _text(root: etree._Element, path: str) -> str:
    found = root.find(path, NS)
    return "".join(found.itertext()).strip() if found is not None else ""


class NotCDA(ValueError):
    pass


CLINICAL_DOCUMENT = "{urn:hl7-org:v3}ClinicalDocument"
XSL_NS = "http://www.w3.org/1999/XSL/Transform"


def clinical_document(root: etree._Element) -> etree._Element:
    """The ClinicalDocument of a parsed file: the root itself, or the one an ANS
    "auto-présentable" CDA carries inside its XSL stylesheet (a top-level data element,
    XSLT 1.0 §2.2, which the stylesheet renders from ``document('')``).

    Only the element is read: the stylesheet is never run, and the file was parsed with the
    safe parser (no DTD, no entities, no network) like any other document.
    """
    if root.tag == CLINICAL_DOCUMENT:
        return root
    if etree.QName(root).namespace == XSL_NS and etree.QName(root).localname in (
            "stylesheet", "transform"):
        found = list(root.iter(CLINICAL_DOCUMENT))
        if len(found) == 1:
            return found[0]
        raise NotCDA(f"XSL stylesheet carries {len(found)} ClinicalDocument elements, "
                     "expected one (ANS auto-présentable CDA)")
    raise NotCDA(f"root element is {etree.QName(root).localname}, not ClinicalDocument")


def read_header(root: etree._Element) -> CDAHeader:
    root = clinical_document(root)
    doc_id = root.find("cda:id", NS)
    if doc_id is None or not doc_id.get("root"):
        raise NotCDA("ClinicalDocument/id is missing")
    pids = tuple(
        (e.get("root") or "", e.get("extension") or "")
        for e in root.findall("cda:recordTarget/cda:patientRole/cda:id", NS)
    )
    set_id = root.find("cda:setId", NS)
    author = _attr(root, "cda:author/cda:assignedAuthor/cda:id", "extension")
    custodian = _attr(
        root,
        "cda:custodian/cda:assignedCustodian/cda:representedCustodianOrganization/cda:id",
        "extension",
    )
    return CDAHeader(
        document_id="^".join(x for x in (doc_id.get("root"), doc_id.get("extension")) if x),
        set_id="^".join(
            x for x in ((set_id.get("root"), set_id.get("extension")) if set_id is not None
                        else ()) if x
        ),
        version=_attr(root, "cda:versionNumber", "value"),
        type_code=_attr(root, "cda:code", "code"),
        type_system=_attr(root, "cda:code", "codeSystem"),
        title=_text(root, "cda:title"),
        effective_time=_attr(root, "cda:effectiveTime", "value"),
        confidentiality=_attr(root, "cda:confidentialityCode", "code"),
        patient_ids=pids,
        author=author,
        custodian=custodian,
    )
