"""ITI-18 Registry Stored Query: FindDocuments and GetDocuments, requests and answers.

Both sides use this module: the client builds AdhocQueryRequests and reads
AdhocQueryResponses; the simulator reads the parameters and builds the answer.

Parameter values follow IHE ITI TF-2a §3.18.4.1.2.3.5: strings in single quotes (a quote
inside doubled), times as unquoted numbers (YYYY[MM[DD[hh[mm[ss]]]]], UTC), several values of
one parameter as a parenthesised list, which the registry ORs; coded values as
`code^^codingScheme` (§3.18.4.1.2.3.4). FindDocuments requires the patient id and at least one
availability status (§3.18.4.1.2.4.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lxml import etree

from .entries import read_document_entries
from .iti41 import (
    FAILURE,
    QUERY,
    SUCCESS,
    RegistryError,
    RegistryResult,
    SoapError,
    append_errors,
    read_registry_result,
)
from .metadata import APPROVED, RIM, RS, Code, DocumentEntry, document_entry_xml

FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
LEAF_CLASS = "LeafClass"
OBJECT_REF = "ObjectRef"
_DTM = re.compile(r"\d{4}(\d{2}){0,5}")  # ITI TF-3 §4.2.3.1.7 (DTM, UTC)
_STATUS = re.compile(r"urn:[A-Za-z0-9:._-]+")


class QueryError(ValueError):
    """A query that cannot be sent as asked (a bad date, an empty patient id): the caller's
    mistake, said before anything goes to the registry."""


@dataclass(frozen=True)
class FindDocuments:
    """FindDocuments parameters (ITI TF-2a Table 3.18.4.1.2.3.7.1-1). Empty = not asked."""

    patient_id: str  # CX, e.g. the INS: 1234567890123^^^&1.2.250.1.213.1.4.10&ISO^NH
    statuses: tuple[str, ...] = (APPROVED,)
    class_codes: tuple[Code, ...] = ()
    type_codes: tuple[Code, ...] = ()
    practice_setting_codes: tuple[Code, ...] = ()
    facility_type_codes: tuple[Code, ...] = ()
    event_codes: tuple[Code, ...] = ()
    confidentiality_codes: tuple[Code, ...] = ()
    format_codes: tuple[Code, ...] = ()
    author_persons: tuple[str, ...] = ()  # XCN, % and _ are LIKE wildcards
    creation_from: str = ""  # DTM, inclusive
    creation_to: str = ""  # DTM, exclusive
    service_start_from: str = ""
    service_start_to: str = ""
    service_stop_from: str = ""
    service_stop_to: str = ""
    return_type: str = LEAF_CLASS


_CODE_PARAMS = (("class_codes", "$XDSDocumentEntryClassCode"),
                ("type_codes", "$XDSDocumentEntryTypeCode"),
                ("practice_setting_codes", "$XDSDocumentEntryPracticeSettingCode"),
                ("facility_type_codes", "$XDSDocumentEntryHealthcareFacilityTypeCode"),
                ("event_codes", "$XDSDocumentEntryEventCodeList"),
                ("confidentiality_codes", "$XDSDocumentEntryConfidentialityCode"),
                ("format_codes", "$XDSDocumentEntryFormatCode"))
_TIME_PARAMS = (("creation_from", "$XDSDocumentEntryCreationTimeFrom"),
                ("creation_to", "$XDSDocumentEntryCreationTimeTo"),
                ("service_start_from", "$XDSDocumentEntryServiceStartTimeFrom"),
                ("service_start_to", "$XDSDocumentEntryServiceStartTimeTo"),
                ("service_stop_from", "$XDSDocumentEntryServiceStopTimeFrom"),
                ("service_stop_to", "$XDSDocumentEntryServiceStopTimeTo"))


def quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quoted_list(values: list[str]) -> str:
    return "(" + ",".join(quoted(v) for v in values) + ")"


def coded(code: Code) -> str:
    """Coded query value: code^^codingScheme (ITI TF-2a §3.18.4.1.2.3.4)."""
    if not code.code or not code.scheme:
        raise QueryError(f"coded value {code.code!r}: both code and coding scheme are needed")
    return f"{code.code}^^{code.scheme}"


def find_documents_slots(q: FindDocuments) -> list[tuple[str, str]]:
    """(parameter, Value text) pairs, checked: QueryError says what is wrong."""
    if not q.patient_id or "^^^" not in q.patient_id:
        raise QueryError("FindDocuments needs the patient id as a CX (id^^^&OID&ISO)")
    if not q.statuses:
        raise QueryError("FindDocuments needs at least one availability status")
    for s in q.statuses:
        if not _STATUS.fullmatch(s):
            raise QueryError(f"availability status {s!r} is not a URN")
    if q.return_type not in (LEAF_CLASS, OBJECT_REF):
        raise QueryError(f"returnType {q.return_type!r}: LeafClass or ObjectRef")
    slots = [("$XDSDocumentEntryPatientId", quoted(q.patient_id)),
             ("$XDSDocumentEntryStatus", quoted_list(list(q.statuses)))]
    for attr, name in _CODE_PARAMS:
        values: tuple[Code, ...] = getattr(q, attr)
        if values:
            slots.append((name, quoted_list([coded(c) for c in values])))
    if q.author_persons:
        slots.append(("$XDSDocumentEntryAuthorPerson", quoted_list(list(q.author_persons))))
    for attr, name in _TIME_PARAMS:
        value: str = getattr(q, attr)
        if value:
            if not _DTM.fullmatch(value):
                raise QueryError(f"{name} {value!r}: a UTC time YYYY[MM[DD[hh[mm[ss]]]]]")
            slots.append((name, value))
    return slots


def adhoc_query_request(query_id: str, slots: list[tuple[str, str]],
                        return_type: str = LEAF_CLASS) -> etree._Element:
    """query:AdhocQueryRequest (ITI TF-2a §3.18.4.1.2); one Slot per parameter."""
    req = etree.Element(f"{{{QUERY}}}AdhocQueryRequest", nsmap={"query": QUERY, "rim": RIM})
    etree.SubElement(req, f"{{{QUERY}}}ResponseOption", returnComposedObjects="true",
                     returnType=return_type)
    q = etree.SubElement(req, f"{{{RIM}}}AdhocQuery", id=query_id)
    for name, value in slots:
        slot = etree.SubElement(q, f"{{{RIM}}}Slot", name=name)
        etree.SubElement(etree.SubElement(slot, f"{{{RIM}}}ValueList"),
                         f"{{{RIM}}}Value").text = value
    return req


def find_documents_request(q: FindDocuments) -> etree._Element:
    return adhoc_query_request(FIND_DOCUMENTS, find_documents_slots(q), q.return_type)


def get_documents_request(unique_ids: list[str] = (),  # type: ignore[assignment]
                          entry_uuids: list[str] = ()  # type: ignore[assignment]
                          ) -> etree._Element:
    """GetDocuments by uniqueId or by entryUUID (exactly one of them, ITI TF-2a
    §3.18.4.1.2.3.7.5)."""
    if bool(unique_ids) == bool(entry_uuids):
        raise QueryError("GetDocuments takes uniqueIds or entryUUIDs, not both, not neither")
    name, values = (("$XDSDocumentEntryUniqueId", list(unique_ids)) if unique_ids
                    else ("$XDSDocumentEntryEntryUUID", list(entry_uuids)))
    return adhoc_query_request(GET_DOCUMENTS, [(name, quoted_list(values))])


# ------------------------------------------------------------------- the registry's side

def parse_value(text: str) -> list[str]:
    """One Slot Value → its values: 'a' → [a], ('a','b') → [a, b], 200412 → [200412].

    Quotes are read as the client wrote them: a doubled quote inside a string is one quote,
    and commas inside quotes do not split."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    out: list[str] = []
    buf: list[str] = []
    in_quote = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_quote:
            if ch == "'" and text[i + 1:i + 2] == "'":
                buf.append("'")
                i += 1
            elif ch == "'":
                in_quote = False
            else:
                buf.append(ch)
        elif ch == "'":
            in_quote = True
        elif ch == ",":
            out.append("".join(buf).strip())
            buf = []
        else:
            buf.append(ch)
        i += 1
    if buf or out:
        out.append("".join(buf).strip())
    return [v for v in out if v]


@dataclass
class StoredQuery:
    """What a registry received: the query id, its parameters (values ORed within one
    parameter; a repeated parameter, as EventCodeList allows, adds a list that is ANDed)."""

    query_id: str
    return_type: str
    params: dict[str, list[list[str]]] = field(default_factory=dict)

    def values(self, name: str) -> list[str]:
        return [v for group in self.params.get(name, []) for v in group]

    def first(self, name: str) -> str:
        values = self.values(name)
        return values[0] if values else ""


def read_adhoc_query(request: etree._Element) -> StoredQuery:
    if request.tag != f"{{{QUERY}}}AdhocQueryRequest":
        raise SoapError("AdhocQueryRequest attendu")
    q = request.find(f"{{{RIM}}}AdhocQuery")
    if q is None:
        raise SoapError("AdhocQuery absent")
    option = request.find(f"{{{QUERY}}}ResponseOption")
    out = StoredQuery(q.get("id", ""), (option.get("returnType") if option is not None
                                         else None) or LEAF_CLASS)
    for s in q.findall(f"{{{RIM}}}Slot"):
        values = [v for el in s.iter(f"{{{RIM}}}Value") for v in parse_value(el.text or "")]
        out.params.setdefault(s.get("name", ""), []).append(values)
    return out


def adhoc_query_response(entries: list[DocumentEntry], return_type: str = LEAF_CLASS,
                         errors: list[RegistryError] = ()  # type: ignore[assignment]
                         ) -> etree._Element:
    """query:AdhocQueryResponse: entries as ExtrinsicObjects (LeafClass) or ObjectRefs;
    errors make it a Failure (ITI TF-2a §3.18.4.1.3)."""
    resp = etree.Element(f"{{{QUERY}}}AdhocQueryResponse",
                         nsmap={"query": QUERY, "rim": RIM, "rs": RS},
                         status=FAILURE if errors else SUCCESS)
    append_errors(resp, errors)
    rol = etree.SubElement(resp, f"{{{RIM}}}RegistryObjectList")
    for d in entries:
        if return_type == OBJECT_REF:
            etree.SubElement(rol, f"{{{RIM}}}ObjectRef", id=d.entry_uuid)
        else:
            rol.append(document_entry_xml(d))
    return resp


# --------------------------------------------------------------------- the client's side

@dataclass
class QueryResponse:
    result: RegistryResult
    entries: list[DocumentEntry] = field(default_factory=list)
    references: list[str] = field(default_factory=list)  # ObjectRef ids (returnType ObjectRef)


def read_query_response(body: etree._Element) -> QueryResponse:
    """An AdhocQueryResponse → status, errors and the entries, in the registry's order."""
    if body.tag != f"{{{QUERY}}}AdhocQueryResponse":
        raise SoapError(f"AdhocQueryResponse expected, got {etree.QName(body).localname}")
    refs = [r.get("id", "") for r in body.iterfind(
        f"{{{RIM}}}RegistryObjectList/{{{RIM}}}ObjectRef")]
    return QueryResponse(read_registry_result(body), read_document_entries(body), refs)
