"""Reading XDS DocumentEntries back out of ebRIM: the inverse of `metadata._doc_entry_xml`.

Why one reader: a registry's ITI-18 answer, a submission the simulator receives and the
feed's own replacement look-ups all describe the same object (IHE ITI TF-3 §4.2.3.2,
DocumentEntry attributes; §4.2.5 for the scheme UUIDs), so they share the one dataclass
`metadata.DocumentEntry`. What a registry leaves out is read as empty, never invented: a
consumer decides what a missing attribute means.
"""

from __future__ import annotations

from lxml import etree

from .metadata import (
    DE_AUTHOR,
    DE_CLASS,
    DE_CONFIDENTIALITY,
    DE_EVENT,
    DE_FACILITY,
    DE_FORMAT,
    DE_PATIENT_ID,
    DE_PRACTICE,
    DE_TYPE,
    DE_UNIQUE_ID,
    DOC_ENTRY,
    RIM,
    Author,
    Code,
    DocumentEntry,
)

_EMPTY = Code("", "")


def slot_values(el: etree._Element, name: str) -> list[str]:
    """Values of the ebRIM Slot `name` directly under `el` (ebRIM 3.0 §4.3 Slot)."""
    return [(v.text or "").strip() for v in el.iterfind(
        f"{{{RIM}}}Slot[@name='{name}']/{{{RIM}}}ValueList/{{{RIM}}}Value")]


def slot_value(el: etree._Element, name: str) -> str:
    values = slot_values(el, name)
    return values[0] if values else ""


def localized(el: etree._Element, tag: str) -> str:
    """Name or Description text (first LocalizedString; ebRIM 3.0 InternationalString)."""
    s = el.find(f"{{{RIM}}}{tag}/{{{RIM}}}LocalizedString")
    return (s.get("value") or "") if s is not None else ""


def external_id(el: etree._Element, scheme: str) -> str:
    e = el.find(f"{{{RIM}}}ExternalIdentifier[@identificationScheme='{scheme}']")
    return (e.get("value") or "") if e is not None else ""


def classifications(el: etree._Element, scheme: str) -> list[etree._Element]:
    return el.findall(f"{{{RIM}}}Classification[@classificationScheme='{scheme}']")


def codes(el: etree._Element, scheme: str) -> list[Code]:
    """Coded classifications: nodeRepresentation, the codingScheme slot, the Name as display
    (ITI TF-3 §4.2.3.1.2)."""
    return [Code(c.get("nodeRepresentation") or "", slot_value(c, "codingScheme"),
                 localized(c, "Name")) for c in classifications(el, scheme)]


def _first(found: list[Code]) -> Code:
    return found[0] if found else _EMPTY


def _author(c: etree._Element) -> Author:
    person = slot_values(c, "authorPerson")
    return Author(person=person[0] if person else "",
                  institutions=tuple(slot_values(c, "authorInstitution")),
                  roles=tuple(slot_values(c, "authorRole")),
                  specialties=tuple(slot_values(c, "authorSpecialty")))


def _size(text: str) -> int:
    return int(text) if text.isdigit() else 0


def read_document_entry(eo: etree._Element) -> DocumentEntry:
    """DocumentEntry from an rim:ExtrinsicObject (LeafClass answer or a submission)."""
    return DocumentEntry(
        unique_id=external_id(eo, DE_UNIQUE_ID),
        patient_id=external_id(eo, DE_PATIENT_ID),
        source_patient_id=slot_value(eo, "sourcePatientId"),
        source_patient_info=slot_values(eo, "sourcePatientInfo"),
        class_code=_first(codes(eo, DE_CLASS)),
        type_code=_first(codes(eo, DE_TYPE)),
        format_code=_first(codes(eo, DE_FORMAT)),
        facility_type=_first(codes(eo, DE_FACILITY)),
        practice_setting=_first(codes(eo, DE_PRACTICE)),
        confidentiality=codes(eo, DE_CONFIDENTIALITY),
        creation_time=slot_value(eo, "creationTime"),
        title=localized(eo, "Name"),
        hash=slot_value(eo, "hash"),
        size=_size(slot_value(eo, "size")),
        authors=[_author(c) for c in classifications(eo, DE_AUTHOR)],
        legal_authenticator=slot_value(eo, "legalAuthenticator"),
        service_start=slot_value(eo, "serviceStartTime"),
        service_stop=slot_value(eo, "serviceStopTime"),
        language=slot_value(eo, "languageCode"),
        mime_type=eo.get("mimeType") or "",
        reference_ids=slot_values(eo, "urn:ihe:iti:xds:2013:referenceIdList"),
        entry_uuid=eo.get("id") or "",
        status=eo.get("status") or "",
        repository_id=slot_value(eo, "repositoryUniqueId"),
        home_community_id=eo.get("home") or "",
        comments=localized(eo, "Description"),
        event_codes=codes(eo, DE_EVENT),
        object_type=eo.get("objectType") or DOC_ENTRY,
    )


def read_document_entries(root: etree._Element) -> list[DocumentEntry]:
    return [read_document_entry(eo) for eo in root.iter(f"{{{RIM}}}ExtrinsicObject")]
