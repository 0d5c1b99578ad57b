"""An XDS DocumentEntry (a DMP entry found with ITI-18) as a FHIR R4 DocumentReference.

The mapping is IHE MHD's (ITI TF-2x Appendix Z / MHD "DocumentEntry ↔ DocumentReference"),
which the ANS draft guide for DMP consultation also follows:
- entryUUID → `identifier` (official, urn:ietf:rfc:3986); uniqueId → `masterIdentifier`; the
  repositoryUniqueId with the uniqueId as a second identifier (system = the repository): the
  pair ITI-43 needs, which MHD leaves to the attachment URL.
- availabilityStatus Approved → `current`, Deprecated → `superseded`, the CI-SIS Deleted →
  `entered-in-error`.
- typeCode → `type`, classCode → `category`, confidentialityCode → `securityLabel`,
  formatCode → `content.format`, practiceSetting / facilityType / eventCodeList /
  serviceStart-Stop → `context`, authorPerson / authorInstitution → `author`,
  legalAuthenticator → `authenticator`, comments → `description`, creationTime →
  `content.attachment.creation` (and `date`, see docs/fhir.md), mimeType / size / hash /
  title / languageCode → `content.attachment`.
People and organisations are logical references (`identifier` + `display`), not contained
resources: the DMP gives their ids (RPPS/IDNPS, FINESS/IDNST) and names, nothing more.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from connectors.dmp.metadata import APPROVED, DELETED, DEPRECATED, Code, DocumentEntry

# OIDs the DMP uses → the FHIR system URIs clients know (FHIR R4 terminologies.html).
SYSTEMS = {
    "2.16.840.1.113883.6.1": "http://loinc.org",
    "2.16.840.1.113883.5.25": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
    "1.3.6.1.4.1.19376.1.2.3": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
}
OIDS = {uri: oid for oid, uri in SYSTEMS.items()}
STATUS_TO_FHIR = {APPROVED: "current", DEPRECATED: "superseded", DELETED: "entered-in-error"}
STATUS_FROM_FHIR = {v: k for k, v in STATUS_TO_FHIR.items()}
_OID = re.compile(r"[0-2](\.(0|[1-9]\d*))+")


def system_uri(scheme: str) -> str:
    """A coding scheme (an OID in XDS) → a FHIR system."""
    if scheme in SYSTEMS:
        return SYSTEMS[scheme]
    return f"urn:oid:{scheme}" if _OID.fullmatch(scheme) else scheme


def scheme_of(system: str) -> str:
    """A FHIR system → the XDS coding scheme (the inverse of `system_uri`)."""
    if system in OIDS:
        return OIDS[system]
    return system.removeprefix("urn:oid:")


def coding(c: Code) -> dict[str, Any]:
    out: dict[str, Any] = {"system": system_uri(c.scheme), "code": c.code}
    if c.display:
        out["display"] = c.display
    return out


def concept(c: Code) -> dict[str, Any] | None:
    if not c.code:
        return None
    return {"coding": [coding(c)], **({"text": c.display} if c.display else {})}


def date_time(dtm: str) -> str | None:
    """XDS DTM (UTC, YYYY[MM[DD[hh[mm[ss]]]]], ITI TF-3 §4.2.3.1.7) → FHIR dateTime."""
    if not dtm or not dtm.isdigit() or len(dtm) < 4:
        return None
    if len(dtm) < 10:
        return "-".join(p for p in (dtm[:4], dtm[4:6], dtm[6:8]) if p)
    d = dtm.ljust(14, "0")  # FHIR: a time has seconds
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}T{d[8:10]}:{d[10:12]}:{d[12:14]}Z"


def instant(dtm: str) -> str | None:
    """FHIR instant (full precision): only from a DTM with at least the day."""
    if not dtm or not dtm.isdigit() or len(dtm) < 8:
        return None
    return date_time(dtm.ljust(14, "0"))


def _components(value: str) -> list[str]:
    return value.split("^")


def _assigning_oid(component: str) -> str:
    """HD `&OID&ISO` → OID."""
    parts = component.split("&")
    return parts[1] if len(parts) > 1 else ""


def _logical(kind: str, ident: str, oid: str, display: str) -> dict[str, Any] | None:
    """A logical reference (FHIR R4 references.html §2.3.0.2): identifier and display."""
    if not ident and not display:
        return None
    out: dict[str, Any] = {"type": kind}
    if ident:
        out["identifier"] = {"value": ident, **({"system": f"urn:oid:{oid}"} if oid else {})}
    if display:
        out["display"] = display
    return out


def person(xcn: str) -> dict[str, Any] | None:
    """XCN (id^family^given^^^prefix^^^&OID&ISO…) → a Practitioner reference."""
    c = _components(xcn) + [""] * 9
    display = " ".join(p for p in (c[5], c[2], c[1]) if p)  # prefix given family
    return _logical("Practitioner", c[0], _assigning_oid(c[8]), display)


def organization(xon: str) -> dict[str, Any] | None:
    """XON (name^^^^^&OID&ISO^IDNST^^^id) → an Organization reference (XON-10, else the
    deprecated XON-3)."""
    c = _components(xon) + [""] * 10
    return _logical("Organization", c[9] or c[2], _assigning_oid(c[5]), c[0])


def master_identifier(unique_id: str) -> dict[str, str]:
    """uniqueId: an OID as urn:oid (MHD), a CI-SIS `root^extension` as system + value."""
    root, _, ext = unique_id.partition("^")
    if ext:
        return {"system": system_uri(root), "value": ext}
    if _OID.fullmatch(root):
        return {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{root}"}
    return {"value": root}


def document_reference(entry: DocumentEntry, resource_id: str, subject: dict[str, str],
                       binary_url: str, data: bytes | None = None) -> dict[str, Any]:
    """The DocumentReference for one DMP entry; `data` inlines the document (a read)."""
    attachment: dict[str, Any] = {"contentType": entry.mime_type or "text/xml",
                                  "url": binary_url}
    if entry.language:
        attachment["language"] = entry.language
    if data is not None:
        attachment["data"] = base64.b64encode(data).decode("ascii")
    if entry.size:
        attachment["size"] = entry.size
    if re.fullmatch(r"[0-9a-fA-F]{40}", entry.hash or ""):
        # FHIR Attachment.hash: base64 of the SHA-1 bytes; XDS hash: the same SHA-1 in hex.
        attachment["hash"] = base64.b64encode(bytes.fromhex(entry.hash)).decode("ascii")
    if entry.title:
        attachment["title"] = entry.title
    created = date_time(entry.creation_time)
    if created:
        attachment["creation"] = created
    content: dict[str, Any] = {"attachment": attachment}
    if entry.format_code.code:
        content["format"] = coding(entry.format_code)

    identifiers = [{"use": "official", "system": "urn:ietf:rfc:3986",
                    "value": entry.entry_uuid}]
    if entry.repository_id and entry.unique_id:
        identifiers.append({"use": "secondary", "system": system_uri(entry.repository_id),
                            "value": entry.unique_id})
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": resource_id,
        "masterIdentifier": master_identifier(entry.unique_id),
        "identifier": identifiers,
        "status": STATUS_TO_FHIR.get(entry.status, "current"),
        "subject": subject,
        "content": [content],
    }
    for key, value in (("type", concept(entry.type_code)),
                       ("category", [concept(entry.class_code)] if entry.class_code.code
                        else None),
                       ("date", instant(entry.creation_time)),
                       ("description", entry.comments or None)):
        if value:
            doc[key] = value
    authors = []
    for a in entry.authors:
        authors += [r for r in (person(a.person), *(organization(i) for i in a.institutions))
                    if r is not None]
    if authors:
        doc["author"] = authors
    legal = person(entry.legal_authenticator) if entry.legal_authenticator else None
    if legal:
        doc["authenticator"] = legal
    labels = [concept(c) for c in entry.confidentiality if c.code]
    if labels:
        doc["securityLabel"] = labels
    context: dict[str, Any] = {}
    events = [concept(c) for c in entry.event_codes if c.code]
    if events:
        context["event"] = events
    period = {k: v for k, v in (("start", date_time(entry.service_start)),
                                ("end", date_time(entry.service_stop))) if v}
    if period:
        context["period"] = period
    for key, c in (("facilityType", entry.facility_type),
                   ("practiceSetting", entry.practice_setting)):
        value = concept(c)
        if value:
            context[key] = value
    if context:
        doc["context"] = context
    return doc
