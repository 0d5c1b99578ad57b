"""CDA R2 documents → "document" events (from folder channels, or embedded in ORU/MDM).

The document is parsed only by `safexml` (no network, no DTD, no entity
expansion, size limit): a hostile document is refused with the reason, never expanded or
fetched. The header fields come from HL7 CDA R2 §4.2 (id, setId, versionNumber, code,
title, effectiveTime, confidentialityCode, recordTarget, author, custodian) and §4.2.3.1
relatedDocument (typeCode RPLC = this document replaces its parentDocument).
"""

from __future__ import annotations

import base64
from typing import Any

from lxml import etree

from safexml import MAX_DOCUMENT_BYTES, UnsafeXML, parse
from transformers.cda.header import NS, NotCDA, clinical_document, read_header
from transformers.exchange import Exchange
from transformers.hl7.header import INS_OIDS

from .common import EventError, envelope, hl7_time

# CDA confidentialityCode (HL7 v3 Confidentiality, 2.16.840.1.113883.5.25).
CONFIDENTIALITY = frozenset({"N", "R", "V"})


def _id(el: etree._Element | None) -> str:
    if el is None:
        return ""
    return "^".join(x for x in (el.get("root"), el.get("extension")) if x)


def read_document(data: bytes, max_bytes: int = MAX_DOCUMENT_BYTES) -> dict[str, Any]:
    """Parse a CDA safely and return its header as plain data; EventError says why not."""
    try:
        root = clinical_document(parse(data, max_bytes))
        header = read_header(root)
    except (UnsafeXML, NotCDA) as exc:
        raise EventError(f"CDA document refused: {exc}") from None
    related = root.find("cda:relatedDocument", NS)
    parent = ""
    relation = ""
    if related is not None:
        relation = related.get("typeCode") or ""
        parent = _id(related.find("cda:parentDocument/cda:id", NS))
    author_name = root.find("cda:author/cda:assignedAuthor/cda:assignedPerson/cda:name", NS)
    family = given = ""
    if author_name is not None:
        family = "".join(author_name.findtext("cda:family", "", NS)).strip()
        given = "".join(author_name.findtext("cda:given", "", NS)).strip()
    pat = root.find("cda:recordTarget/cda:patientRole/cda:patient", NS)
    return {
        "document_id": header.document_id, "set_id": header.set_id or None,
        "version": header.version or None, "type_code": header.type_code,
        "type_system": header.type_system, "title": header.title,
        "effective_time": hl7_time(header.effective_time),
        "confidentiality": header.confidentiality if header.confidentiality in
        CONFIDENTIALITY else (header.confidentiality or "N"),
        "author": {"id": header.author, "family": family, "given": given},
        "custodian": header.custodian, "relation": relation or None,
        "parent_id": parent or None,
        "patient_ids": [list(p) for p in header.patient_ids],
        "patient": {
            "family": (pat.findtext("cda:name/cda:family", "", NS) or "").strip()
            if pat is not None else "",
            "given": (pat.findtext("cda:name/cda:given", "", NS) or "").strip()
            if pat is not None else "",
            "birth_date": (pat.find("cda:birthTime", NS).get("value", "")[:8]
                           if pat is not None and pat.find("cda:birthTime", NS) is not None
                           else "") or None,
            "sex": (pat.find("cda:administrativeGenderCode", NS).get("code")
                    if pat is not None and pat.find("cda:administrativeGenderCode", NS)
                    is not None else None),
        },
    }


def document_event(data: bytes, *, action: str | None = None,
                   masking: dict[str, bool] | None = None,
                   sender: str = "") -> dict[str, Any]:
    """A document event with the CDA bytes (base64) and its header.

    `action`: new / replace / delete as the carrying message says (ORC-1, MDM trigger);
    without one, relatedDocument RPLC means replace. `source` is who issued the document —
    the custodian (CDA R2 §4.2.2.3), else `sender` (MSH-4, the folder channel): the timeline
    files a document under (source, id, patient), so one source's id never reaches another
    source's document.
    """
    head = read_document(data)
    if action is None:
        action = "replace" if head["relation"] == "RPLC" and head["parent_id"] else "new"
    return {"type": "document", "key": head["document_id"], "action": action,
            "source": head["custodian"] or sender,
            "at": head["effective_time"], "header": head, "masking": masking or {},
            "content_b64": base64.b64encode(data).decode("ascii"),
            "content_type": "application/xml"}


def patient_from_header(head: dict[str, Any]) -> dict[str, Any]:
    """recordTarget/patientRole/id → identifiers (INS by OID, the others as local ids)."""
    ids = []
    for root, ext in head["patient_ids"]:
        if not ext:
            continue
        ids.append({"value": ext, "authority": root, "namespace": "",
                    "type": "INS" if root in INS_OIDS else "PI"})
    if not ids:
        raise EventError("CDA recordTarget has no patient identifier")
    p = head["patient"]
    return {"identifiers": ids, "identity_status": None, "ins_usable": True,
            "family": p["family"], "given": p["given"], "birth_date": p["birth_date"],
            "sex": p["sex"], "death": False}


def cda_events(exchange: Exchange) -> Exchange | None:
    """A CDA file (folder channel) → one document event for the patient of recordTarget."""
    if exchange.message is not None:
        return None
    event = document_event(exchange.raw, sender=exchange.headers.get("sending_facility")
                           or exchange.channel or "")
    return envelope(exchange, patient_from_header(event["header"]), [event])


def decode_ed(value_components: list[str]) -> bytes | None:
    """OBX-5 of type ED: ^TEXT^XML^Base64^data (HL7 v2.5.1 §2.A.24). None if not base64."""
    comps = value_components + [""] * 5
    if comps[3].lower() != "base64":
        return None
    payload = "".join(comps[4].split())
    if len(payload) > MAX_DOCUMENT_BYTES * 4 // 3 + 4:
        raise EventError("embedded document exceeds the size limit")
    # Some senders drop the trailing '=' padding (two ANS samples do); restore it.
    payload += "=" * (-len(payload) % 4)
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError:
        raise EventError("OBX-5 ED data is not valid base64") from None
