"""XDS.b metadata for the DMP: DocumentEntry and SubmissionSet from a CDA header.

Mapping: IHE ITI TF-3 §4.2.3 (ebRIM representation of XDS metadata), constrained by the
CI-SIS "Volet Partage de documents de santé" and the ANS HL7 v2 → CDA transmission guide
(mapping of XDS metadata from the CDA header; docs/dmp.md has the table). Coded values are
checked against the CI-SIS value sets copied into connectors/dmp/data/jdv.

Why the author, institution and patient are formatted here, by hand: the DMP validates the
HL7 v2 datatypes inside the slots (XCN, XON, CX) exactly, with the national identifier types
(IDNPS for professionals, IDNST for structures, NH for the INS).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

from lxml import etree

from safexml import copy, parse_shipped

DATA = Path(__file__).resolve().parent / "data"
XDS_SCHEMA = DATA / "xds" / "XDS.b_DocumentRepository.xsd"

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"
V3 = "urn:hl7-org:v3"
NS = {"rim": RIM, "lcm": LCM, "rs": RS, "xdsb": XDSB, "cda": V3}

# IHE ITI TF-3 §4.2.5 (stable UUIDs of classification and identification schemes).
DOC_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
DE_EVENT = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
ON_DEMAND_ENTRY = "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
CLASSIFICATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
EXTERNAL_ID = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"  # CI-SIS TD3.3c (logical deletion)
UPDATE_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"

INS_OIDS = frozenset({"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10",
                      "1.2.250.1.213.1.4.11"})
MASKING_SCHEME = "1.2.250.1.213.1.1.4.13"
CLASS_SCHEME = "1.2.250.1.213.1.1.4.1"  # TRE_A03 classCode
FORMAT_IHE = "1.3.6.1.4.1.19376.1.2.3"  # IHE format codes
FORMAT_CISIS = "1.2.250.1.213.1.1.4.2.282"  # TRE_A06 CI-SIS complementary format codes
CONTENT_TYPE_SCHEME = "1.2.250.1.213.2.2"  # DMP contentTypeCode (J59), see docs/dmp.md

# ASS_X04 (type → class), subset for the documents Parcours feeds; others default to "10".
CLASS_BY_TYPE = {"11502-2": ("10", "Compte rendu"), "18748-4": ("10", "Compte rendu"),
                 "11490-0": ("10", "Compte rendu"), "34133-9": ("11", "Synthèse")}
# ASS_A11 (CDA model templateId → formatCode), subset.
FORMAT_BY_TEMPLATE = {
    "1.2.250.1.213.1.1.1.55": ("urn:ihe:lab:xd-lab:2008", FORMAT_IHE,
                               "CR d'examens biologiques"),
    "1.3.6.1.4.1.19376.1.3.3": ("urn:ihe:lab:xd-lab:2008", FORMAT_IHE,
                                "CR d'examens biologiques"),
    "1.2.250.1.213.1.1.1.29": ("urn:asip:ci-sis:ldl-ses:2017", FORMAT_CISIS,
                               "Lettre de liaison à la sortie"),
}
# PV1-2 → contentTypeCode, as the ANS HL7 v2 transmission guide suggests.
CONTENT_TYPE_BY_CLASS = {"I": "03", "O": "07", "R": "19", "N": "97"}


class MetadataError(ValueError):
    """The document cannot be described with valid CI-SIS metadata (it would be refused)."""


@dataclass(frozen=True)
class Code:
    code: str
    scheme: str
    display: str = ""


@dataclass(frozen=True)
class Author:
    person: str = ""  # XCN
    institutions: tuple[str, ...] = ()  # XON
    roles: tuple[str, ...] = ()
    specialties: tuple[str, ...] = ()  # CE: code^display^scheme


@dataclass
class DocumentEntry:
    unique_id: str
    patient_id: str  # CX with the INS
    source_patient_id: str
    source_patient_info: list[str]
    class_code: Code
    type_code: Code
    format_code: Code
    facility_type: Code
    practice_setting: Code
    confidentiality: list[Code]
    creation_time: str
    title: str
    hash: str
    size: int
    authors: list[Author]
    legal_authenticator: str = ""
    service_start: str = ""
    service_stop: str = ""
    language: str = "fr-FR"
    mime_type: str = "text/xml"
    reference_ids: list[str] = field(default_factory=list)
    entry_uuid: str = ""
    set_id: str = ""
    version: str = ""
    parent_unique_id: str = ""  # relatedDocument RPLC in the CDA
    # Set by the registry, read back from ITI-18 answers (ITI TF-3 §4.2.3.2): never sent in
    # an ITI-41 submission, where they stay empty.
    status: str = ""  # availabilityStatus
    repository_id: str = ""  # repositoryUniqueId: where ITI-43 fetches the document
    home_community_id: str = ""
    comments: str = ""
    event_codes: list[Code] = field(default_factory=list)
    object_type: str = DOC_ENTRY  # stable, or on-demand (ON_DEMAND_ENTRY)

    def __post_init__(self) -> None:
        if not self.entry_uuid:
            self.entry_uuid = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, self.unique_id)}"


@dataclass
class SubmissionSet:
    unique_id: str
    source_id: str
    submission_time: str
    patient_id: str
    content_type: Code
    author: Author
    title: str = ""
    entry_uuid: str = ""

    def __post_init__(self) -> None:
        if not self.entry_uuid:
            self.entry_uuid = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, self.unique_id)}"


# ---------------------------------------------------------------- value sets (CI-SIS JDV)

@lru_cache(maxsize=16)
def value_set(name: str) -> dict[tuple[str, str], str]:
    """(code, codeSystem) → displayName of a copied CI-SIS value set (IHE SVS XML)."""
    root = parse_shipped(DATA / "jdv" / f"{name}.xml")
    return {(c.get("code", ""), c.get("codeSystem", "")): c.get("displayName", "")
            for c in root.iter("{urn:ihe:iti:svs:2008}Concept")}


def in_value_set(name: str, code: Code) -> bool:
    return (code.code, code.scheme) in value_set(name)


def masking_codes() -> dict[str, Code]:
    vs = value_set("JDV_J08_XdsConfidentialityCode_CISIS")
    return {c: Code(c, s, d) for (c, s), d in vs.items() if s == MASKING_SCHEME}


# --------------------------------------------------------------------------- formatting

def xds_time(ts: str) -> str:
    """HL7 TS (local time with zone) → XDS DTM in UTC (ITI TF-3 §4.2.3.1.7)."""
    ts = ts.strip()
    if not ts:
        return ""
    zone = ""
    for sign in ("+", "-"):
        if sign in ts:
            ts, zone = ts.split(sign, 1)[0], sign + ts.split(sign, 1)[1]
    digits = ts.split(".")[0]
    if not zone or len(digits) < 12:
        return digits[:14]
    dt = datetime.strptime(digits.ljust(14, "0")[:14], "%Y%m%d%H%M%S")
    offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5] or 0))
    dt = dt.replace(tzinfo=timezone(offset if zone[0] == "+" else -offset))
    return dt.astimezone(UTC).strftime("%Y%m%d%H%M%S")[: len(digits)]


def cx_ins(ins: str, oid: str) -> str:
    return f"{ins}^^^&{oid}&ISO^NH"


def xcn(ident: str, family: str, given: str, oid: str, prefix: str = "") -> str:
    """XCN as the CI-SIS wants it: id^family^given^^^prefix^^^&OID&ISO^D^^^IDNPS."""
    kind = "IDNPS" if oid == "1.2.250.1.71.4.2.1" else "EI"
    return f"{ident}^{family}^{given}^^^{prefix}^^^&{oid}&ISO^D^^^{kind}"


def xon(name: str, ident: str, oid: str) -> str:
    kind = "IDNST" if oid == "1.2.250.1.71.4.2.2" else "EI"
    return f"{name}^^^^^&{oid}&ISO^{kind}^^^{ident}"


# ---------------------------------------------------------------------- CDA → metadata

def _a(el: etree._Element | None, attr: str) -> str:
    return (el.get(attr) or "") if el is not None else ""


def _f(root: etree._Element, path: str) -> etree._Element | None:
    return root.find(path, NS)


def _text(el: etree._Element | None) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def _unique_id(el: etree._Element | None) -> str:
    root, ext = _a(el, "root"), _a(el, "extension")
    return f"{root}^{ext}" if ext else root


def _author(assigned: etree._Element | None) -> Author:
    if assigned is None:
        return Author()
    pid = _f(assigned, "cda:id")
    name = _f(assigned, "cda:assignedPerson/cda:name")
    person = ""
    if pid is not None:
        person = xcn(_a(pid, "extension"), _text(_f(name, "cda:family")) if name is not None
                     else "", _text(_f(name, "cda:given")) if name is not None else "",
                     _a(pid, "root"), _text(_f(name, "cda:prefix")) if name is not None else "")
    institutions = []
    org = _f(assigned, "cda:representedOrganization")
    if org is not None and _f(org, "cda:id") is not None:
        oid = _f(org, "cda:id")
        institutions.append(xon(_text(_f(org, "cda:name")), _a(oid, "extension"),
                                _a(oid, "root")))
    code = _f(assigned, "cda:code")
    specialties = ()
    if code is not None and _a(code, "code"):
        specialties = (f"{_a(code, 'code')}^{_a(code, 'displayName')}^{_a(code, 'codeSystem')}",)
    return Author(person=person, institutions=tuple(institutions), specialties=specialties)


def _format_code(root: etree._Element) -> Code:
    templates = [_a(t, "root") for t in root.findall("cda:templateId", NS)]
    for t in templates:
        if t in FORMAT_BY_TEMPLATE:
            code, scheme, display = FORMAT_BY_TEMPLATE[t]
            return Code(code, scheme, display)
    body = _f(root, "cda:component/cda:nonXMLBody/cda:text")
    if body is not None:
        media = _a(body, "mediaType")
        if media == "application/pdf":
            return Code("urn:ihe:iti:xds-sd:pdf:2008", FORMAT_IHE, "PDF")
        return Code("urn:ihe:iti:xds-sd:text:2008", FORMAT_IHE, "Texte")
    return Code("urn:asip:ci-sis:2010", FORMAT_CISIS, "Document à corps structuré")


def document_entry(cda: bytes, root: etree._Element, *, masking: Iterable[str] = (),
                   source_patient_id: str = "", patient_class: str = "",
                   reference_ids: Sequence[str] = ()) -> DocumentEntry:
    """DocumentEntry from a CDA (bytes for hash/size, root already safely parsed).

    `masking`: CI-SIS masking codes (MASQUE_PS, INVISIBLE_PATIENT,
    INVISIBLE_REPRESENTANTS_LEGAUX) added to confidentialityCode after the CDA's own code.
    Raises MetadataError with every problem found, so one answer says all that is wrong.
    """
    problems: list[str] = []
    ins = ins_oid = ""
    local: list[str] = []
    for pid in root.findall("cda:recordTarget/cda:patientRole/cda:id", NS):
        r, e = _a(pid, "root"), _a(pid, "extension")
        if r in INS_OIDS and not ins:
            ins, ins_oid = e, r
        elif e:
            local.append(f"{e}^^^&{r}&ISO^PI")
    if not ins:
        problems.append("recordTarget has no INS (patientRole/id with an INS OID)")
    patient_id = cx_ins(ins, ins_oid) if ins else ""

    type_el = _f(root, "cda:code")
    type_code = Code(_a(type_el, "code"), _a(type_el, "codeSystem"), _a(type_el, "displayName"))
    if not in_value_set("JDV_J07_XdsTypeCode_CISIS", type_code):
        problems.append(f"typeCode {type_code.code} ({type_code.scheme}) is not in JDV_J07")
    else:
        type_code = Code(type_code.code, type_code.scheme,
                         value_set("JDV_J07_XdsTypeCode_CISIS")[(type_code.code,
                                                                 type_code.scheme)])
    cls = CLASS_BY_TYPE.get(type_code.code, ("10", "Compte rendu"))
    class_code = Code(cls[0], CLASS_SCHEME, cls[1])

    conf_el = _f(root, "cda:confidentialityCode")
    conf = Code(_a(conf_el, "code") or "N", _a(conf_el, "codeSystem") or "2.16.840.1.113883.5.25",
                _a(conf_el, "displayName"))
    confidentiality = [conf]
    if not in_value_set("JDV_J08_XdsConfidentialityCode_CISIS", conf):
        problems.append(f"confidentialityCode {conf.code} is not in JDV_J08")
    known_masks = masking_codes()
    for m in masking:
        if m not in known_masks:
            problems.append(f"unknown masking code {m}")
        elif known_masks[m] not in confidentiality:
            confidentiality.append(known_masks[m])

    fac_el = _f(root, "cda:componentOf/cda:encompassingEncounter/cda:location/"
                      "cda:healthCareFacility/cda:code")
    facility = Code(_a(fac_el, "code"), _a(fac_el, "codeSystem"), _a(fac_el, "displayName"))
    if not in_value_set("JDV_J02_XdsHealthcareFacilityTypeCode_CISIS", facility):
        problems.append(f"healthcareFacilityTypeCode {facility.code or '(absent)'} is not in "
                        "JDV_J02 (componentOf/encompassingEncounter/location/healthCareFacility)")
    ps_el = None
    for path in ("cda:documentationOf/cda:serviceEvent/cda:performer/cda:assignedEntity/"
                 "cda:representedOrganization/cda:standardIndustryClassCode",
                 "cda:legalAuthenticator/cda:assignedEntity/cda:representedOrganization/"
                 "cda:standardIndustryClassCode",
                 "cda:author/cda:assignedAuthor/cda:representedOrganization/"
                 "cda:standardIndustryClassCode"):
        ps_el = _f(root, path)
        if ps_el is not None:
            break
    practice = Code(_a(ps_el, "code"), _a(ps_el, "codeSystem"), _a(ps_el, "displayName"))
    if not in_value_set("JDV_J04_XdsPracticeSettingCode_CISIS", practice):
        problems.append(f"practiceSettingCode {practice.code or '(absent)'} is not in JDV_J04 "
                        "(serviceEvent/performer/.../standardIndustryClassCode)")

    uid = _unique_id(_f(root, "cda:id"))
    if not uid:
        problems.append("ClinicalDocument/id is missing")
    creation = xds_time(_a(_f(root, "cda:effectiveTime"), "value"))
    if not creation:
        problems.append("ClinicalDocument/effectiveTime is missing")
    authors = [_author(_f(a, "cda:assignedAuthor")) for a in root.findall("cda:author", NS)]
    if not authors or not authors[0].person:
        problems.append("author/assignedAuthor/id is missing")
    legal = _author(_f(root, "cda:legalAuthenticator/cda:assignedEntity")).person
    if problems:
        raise MetadataError("; ".join(problems))

    patient = _f(root, "cda:recordTarget/cda:patientRole/cda:patient")
    info = [f"PID-3|{patient_id}"] + [f"PID-3|{x}" for x in local]
    if patient is not None:
        name = _f(patient, "cda:name")
        fam = _text(_f(name, "cda:family")) if name is not None else ""
        giv = _text(_f(name, "cda:given")) if name is not None else ""
        info.append(f"PID-5|{fam}^{giv}^^^^^L")
        if _a(_f(patient, "cda:birthTime"), "value"):
            info.append(f"PID-7|{_a(_f(patient, 'cda:birthTime'), 'value')[:8]}")
        if _a(_f(patient, "cda:administrativeGenderCode"), "code"):
            info.append(f"PID-8|{_a(_f(patient, 'cda:administrativeGenderCode'), 'code')}")
    parent = _f(root, "cda:relatedDocument[@typeCode='RPLC']/cda:parentDocument/cda:id")
    event = "cda:documentationOf/cda:serviceEvent/cda:effectiveTime/"
    return DocumentEntry(
        unique_id=uid,
        patient_id=patient_id,
        source_patient_id=source_patient_id or (local[0].rsplit("^", 1)[0] if local
                                                else patient_id),
        source_patient_info=info,
        class_code=class_code,
        type_code=type_code,
        format_code=_format_code(root),
        facility_type=facility,
        practice_setting=practice,
        confidentiality=confidentiality,
        creation_time=creation,
        title=_text(_f(root, "cda:title")) or type_code.display,
        hash=hashlib.sha1(cda).hexdigest(),  # ITI TF-3 §4.2.3.2.11: SHA-1, hex
        size=len(cda),
        authors=authors,
        legal_authenticator=legal,
        service_start=xds_time(_a(_f(root, event + "cda:low"), "value")),
        service_stop=xds_time(_a(_f(root, event + "cda:high"), "value")),
        language=_a(_f(root, "cda:languageCode"), "code") or "fr-FR",
        reference_ids=list(reference_ids),
        set_id=_unique_id(_f(root, "cda:setId")),
        version=_a(_f(root, "cda:versionNumber"), "value"),
        parent_unique_id=_unique_id(parent) if parent is not None else "",
    )


def submission_set(entry: DocumentEntry, *, source_id: str, unique_id: str,
                   author: Author | None = None, patient_class: str = "",
                   now: datetime | None = None) -> SubmissionSet:
    code = CONTENT_TYPE_BY_CLASS.get(patient_class, "04")
    return SubmissionSet(
        unique_id=unique_id,
        source_id=source_id,
        submission_time=(now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S"),
        patient_id=entry.patient_id,
        content_type=Code(code, CONTENT_TYPE_SCHEME, ""),
        author=author or (entry.authors[0] if entry.authors else Author()),
        title=entry.title,
    )


# ------------------------------------------------------------------------- ebRIM XML

def _rim(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
    e = etree.SubElement(parent, f"{{{RIM}}}{tag}")
    for k, v in attrs.items():
        e.set(k, v)
    return e


def _slot(parent: etree._Element, name: str, values: Iterable[str]) -> None:
    values = [v for v in values if v]
    if not values:
        return
    vl = _rim(_rim(parent, "Slot", name=name), "ValueList")
    for v in values:
        _rim(vl, "Value").text = v


def _name(parent: etree._Element, value: str) -> None:
    if value:
        _rim(_rim(parent, "Name"), "LocalizedString", value=value)


def _classification(parent: etree._Element, scheme: str, obj: str, code: Code, cid: str) -> None:
    if not code.code:  # an entry read back without it (ITI-18 answers may omit it)
        return
    c = _rim(parent, "Classification", classificationScheme=scheme, classifiedObject=obj,
             id=cid, nodeRepresentation=code.code, objectType=CLASSIFICATION)
    _slot(c, "codingScheme", [code.scheme])
    _name(c, code.display or code.code)


def _author_classification(parent: etree._Element, scheme: str, obj: str, a: Author,
                           cid: str) -> None:
    c = _rim(parent, "Classification", classificationScheme=scheme, classifiedObject=obj,
             id=cid, nodeRepresentation="", objectType=CLASSIFICATION)
    _slot(c, "authorPerson", [a.person])
    _slot(c, "authorInstitution", a.institutions)
    _slot(c, "authorRole", a.roles)
    _slot(c, "authorSpecialty", a.specialties)


def _external_id(parent: etree._Element, scheme: str, obj: str, value: str, name: str,
                 eid: str) -> None:
    e = _rim(parent, "ExternalIdentifier", identificationScheme=scheme, registryObject=obj,
             id=eid, value=value, objectType=EXTERNAL_ID)
    _name(e, name)


def _doc_entry_xml(rol: etree._Element, d: DocumentEntry) -> etree._Element:
    eo = _rim(rol, "ExtrinsicObject", id=d.entry_uuid, mimeType=d.mime_type,
              objectType=d.object_type)
    if d.status:
        eo.set("status", d.status)
    if d.home_community_id:
        eo.set("home", d.home_community_id)
    _slot(eo, "creationTime", [d.creation_time])
    _slot(eo, "hash", [d.hash])
    _slot(eo, "languageCode", [d.language])
    _slot(eo, "legalAuthenticator", [d.legal_authenticator])
    _slot(eo, "serviceStartTime", [d.service_start])
    _slot(eo, "serviceStopTime", [d.service_stop])
    _slot(eo, "repositoryUniqueId", [d.repository_id])
    _slot(eo, "size", [str(d.size)] if d.size else [])
    _slot(eo, "sourcePatientId", [d.source_patient_id])
    _slot(eo, "sourcePatientInfo", d.source_patient_info)
    _slot(eo, "urn:ihe:iti:xds:2013:referenceIdList", d.reference_ids)
    _name(eo, d.title)
    if d.comments:
        _rim(_rim(eo, "Description"), "LocalizedString", value=d.comments)
    n = 0

    def cid() -> str:
        nonlocal n
        n += 1
        return f"{d.entry_uuid}-c{n}".replace("urn:uuid:", "cl-")

    for a in d.authors:
        _author_classification(eo, DE_AUTHOR, d.entry_uuid, a, cid())
    _classification(eo, DE_CLASS, d.entry_uuid, d.class_code, cid())
    for c in d.confidentiality:
        _classification(eo, DE_CONFIDENTIALITY, d.entry_uuid, c, cid())
    _classification(eo, DE_FORMAT, d.entry_uuid, d.format_code, cid())
    _classification(eo, DE_FACILITY, d.entry_uuid, d.facility_type, cid())
    _classification(eo, DE_PRACTICE, d.entry_uuid, d.practice_setting, cid())
    _classification(eo, DE_TYPE, d.entry_uuid, d.type_code, cid())
    for c in d.event_codes:
        _classification(eo, DE_EVENT, d.entry_uuid, c, cid())
    _external_id(eo, DE_PATIENT_ID, d.entry_uuid, d.patient_id,
                 "XDSDocumentEntry.patientId", cid())
    _external_id(eo, DE_UNIQUE_ID, d.entry_uuid, d.unique_id, "XDSDocumentEntry.uniqueId", cid())
    return eo


def document_entry_xml(d: DocumentEntry) -> etree._Element:
    """A standalone ExtrinsicObject: what a registry returns for the entry (ITI-18)."""
    holder = etree.Element(f"{{{RIM}}}RegistryObjectList", nsmap={"rim": RIM})
    return _doc_entry_xml(holder, d)


def _submission_set_xml(rol: etree._Element, s: SubmissionSet) -> None:
    rp = _rim(rol, "RegistryPackage", id=s.entry_uuid)
    _slot(rp, "submissionTime", [s.submission_time])
    _name(rp, s.title)
    base = s.entry_uuid.replace("urn:uuid:", "ss-")
    _author_classification(rp, SS_AUTHOR, s.entry_uuid, s.author, base + "-author")
    _classification(rp, SS_CONTENT_TYPE, s.entry_uuid, s.content_type, base + "-content")
    _external_id(rp, SS_UNIQUE_ID, s.entry_uuid, s.unique_id, "XDSSubmissionSet.uniqueId",
                 base + "-uid")
    _external_id(rp, SS_SOURCE_ID, s.entry_uuid, s.source_id, "XDSSubmissionSet.sourceId",
                 base + "-src")
    _external_id(rp, SS_PATIENT_ID, s.entry_uuid, s.patient_id, "XDSSubmissionSet.patientId",
                 base + "-pid")
    _rim(rol, "Classification", classifiedObject=s.entry_uuid,
         classificationNode=SUBMISSION_SET_NODE, id=base + "-node", objectType=CLASSIFICATION)


def _association(rol: etree._Element, kind: str, source: str, target: str, aid: str,
                 slots: dict[str, str] | None = None) -> None:
    a = _rim(rol, "Association", associationType=kind, sourceObject=source,
             targetObject=target, id=aid,
             objectType="urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association")
    for k, v in (slots or {}).items():
        _slot(a, k, [v])


def submit_objects_request(sset: SubmissionSet, entry: DocumentEntry,
                           replaces_entry_uuid: str = "") -> etree._Element:
    """lcm:SubmitObjectsRequest for ITI-41 (ITI TF-2b §3.41.4.1.2): the submission set, one
    document entry, HasMember, and RPLC when the document replaces an entry already in the
    registry (ITI TF-3 §4.2.2.2.2: target = the entryUUID of the replaced entry)."""
    sor = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"lcm": LCM, "rim": RIM})
    rol = _rim(sor, "RegistryObjectList")
    _submission_set_xml(rol, sset)
    _doc_entry_xml(rol, entry)
    _association(rol, HAS_MEMBER, sset.entry_uuid, entry.entry_uuid, "urn:uuid:" + str(
        uuid.uuid5(uuid.NAMESPACE_URL, sset.unique_id + "|member")),
        {"SubmissionSetStatus": "Original"})
    if replaces_entry_uuid:
        _association(rol, RPLC, entry.entry_uuid, replaces_entry_uuid, "urn:uuid:" + str(
            uuid.uuid5(uuid.NAMESPACE_URL, sset.unique_id + "|rplc")))
    return sor


def update_status_request(sset: SubmissionSet, target_entry_uuid: str,
                          original: str = APPROVED, new: str = DELETED) -> etree._Element:
    """ITI-57 Update Document Set changing availabilityStatus (ITI TF-2b §3.57.4.1.3.3.1); the
    DMP uses it with the CI-SIS status Deleted for a logical deletion (TD3.3c)."""
    sor = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"lcm": LCM, "rim": RIM})
    rol = _rim(sor, "RegistryObjectList")
    _submission_set_xml(rol, sset)
    _association(rol, UPDATE_STATUS, sset.entry_uuid, target_entry_uuid, "urn:uuid:" + str(
        uuid.uuid5(uuid.NAMESPACE_URL, sset.unique_id + "|status")),
        {"OriginalStatus": original, "NewStatus": new})
    return sor


@lru_cache(maxsize=1)
def xds_schema() -> etree.XMLSchema:
    return etree.XMLSchema(parse_shipped(XDS_SCHEMA).getroottree())


def schema_errors(element: etree._Element) -> list[str]:
    """Errors of an ebRS/XDS.b element against the copied schemas ([] when valid)."""
    schema = xds_schema()
    doc = copy(element)  # validate a standalone copy
    if schema.validate(doc):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]
