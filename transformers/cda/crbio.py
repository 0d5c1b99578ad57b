"""Build a CR-BIO document (CI-SIS volet BIO-CR-BIO 2024.01, CDA R2 level 3) from lab results.

Why we build it rather than forward the ORU: the DMP only takes CDA documents, and the CR-BIO
is the CI-SIS model for laboratory reports. The structure follows the ANS examples of the
2024.01 release (header as in CI-SIS "Volet Structuration minimale" + IHE PALM XD-LAB; body as
FR-CR-BIO-Chapitre → FR-CR-BIO-Sous-Chapitre → FR-Resultats-examens-de-biologie-medicale →
FR-Resultat-examens-de-biologie-element-clinique-pertinent) and the ANS schematron, which also
requires the FR-Document-PDF-copie section (a PDF rendering of the report).

Input is plain data (`CrBioRequest`), so the builder does not care whether results came from
the normalisation transformer or a test. Output is UTF-8 bytes, deterministic for a given
request (a replay builds the same document).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

from lxml import etree

from safexml import parse_shipped

V3 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
LAB = "urn:oid:1.3.6.1.4.1.19376.1.3.2"  # IHE PaLM extension (lab:statusCode)
LOINC = "2.16.840.1.113883.6.1"
INTERPRETATION = "2.16.840.1.113883.5.83"  # HL7 ObservationInterpretation
CONFIDENTIALITY = "2.16.840.1.113883.5.25"
RPPS_OID = "1.2.250.1.71.4.2.1"  # national health professional ids (IDNPS)
STRUCTURE_OID = "1.2.250.1.71.4.2.2"  # national structure ids (IDNST)
PROFESSION_OID = "1.2.250.1.213.1.1.4.5"  # TRE_G15 professions / specialties
PRACTICE_SETTING_OID = "1.2.250.1.213.1.1.4.9"  # TRE_A00 cadre d'exercice (J04)
FACILITY_TYPE_OID = "1.2.250.1.71.4.2.4"  # TRE_R02 secteur d'activité (J02)
NSMAP = {None: V3, "xsi": XSI, "lab": LAB}

JDV_DIR = Path(__file__).resolve().parent / "jeuxDeValeurs"
JDV_INTERPRETATION = JDV_DIR / "JDV_HL7_ObservationInterpretation_CISIS.xml"


@lru_cache(maxsize=1)
def interpretation_codes() -> dict[str, str]:
    """Codes of JDV_HL7_ObservationInterpretation_CISIS (the schematron checks membership)."""
    root = parse_shipped(JDV_INTERPRETATION)
    return {
        c.get("code", ""): c.get("displayName", "")
        for c in root.iter("{urn:ihe:iti:svs:2008}Concept")
        if c.get("codeSystem") == INTERPRETATION
    }


@dataclass(frozen=True)
class Address:
    street: str = ""
    postal_code: str = ""
    city: str = ""


@dataclass(frozen=True)
class Organisation:
    id_extension: str  # FINESS / SIRET prefixed per IDNST, e.g. "1120459876"
    name: str
    address: Address = Address()
    telecom: str = ""  # "tel:0174589607"
    id_root: str = STRUCTURE_OID
    practice_setting: str = "AMBULATOIRE"  # J04 (standardIndustryClassCode)
    practice_setting_display: str = "Ambulatoire"
    facility_type: str = "SA25"  # J02 (healthCareFacility/code)
    facility_type_display: str = "Laboratoire de biologie médicale"


@dataclass(frozen=True)
class Professional:
    id_extension: str  # RPPS prefixed per IDNPS ("8" + RPPS)
    family: str
    given: str = ""
    prefix: str = ""
    id_root: str = RPPS_OID
    role_code: str = "G15_10/SM03"  # TRE_G15: "Médecin - Biologie médicale (SM)"
    role_display: str = "Médecin - Biologie médicale (SM)"


@dataclass(frozen=True)
class Patient:
    ins: str
    ins_oid: str  # 1.2.250.1.213.1.4.8 (NIR), .10 (test NIR), ...
    family: str
    given: str = ""
    gender: str = "UN"  # M, F, UN
    birth_date: str = ""  # YYYYMMDD
    local_ids: tuple[tuple[str, str], ...] = ()  # (root OID, extension)


@dataclass(frozen=True)
class Result:
    """One result, from a NormalisedObservation (as JSON) or written by hand."""

    loinc: str | None
    display: str
    value: str  # canonical value ("" when none)
    unit: str  # UCUM
    value_type: str = "NM"
    comparator: str = ""  # "<", ">", "<=", ">="
    reference_low: str | None = None
    reference_high: str | None = None
    reference_text: str = ""
    abnormal_flag: str = ""
    observed_at: str = ""
    status: str = "F"
    original_code: str = ""
    original_system: str = ""
    original_text: str = ""

    @classmethod
    def from_normalised(cls, obs: dict[str, Any]) -> Result:
        orig = obs.get("original") or {}
        numeric = obs.get("value") not in (None, "") and obs.get("outcome") == "normalised"
        return cls(
            loinc=obs.get("loinc"),
            display=obs.get("display_fr") or obs.get("display") or orig.get("text") or "",
            value=str(obs.get("value")) if numeric else (obs.get("value_text") or ""),
            unit=obs.get("unit") or "" if numeric else "",
            value_type="NM" if numeric else (obs.get("value_type") or "ST"),
            comparator=obs.get("comparator") or "",
            reference_low=obs.get("reference_low") if numeric else None,
            reference_high=obs.get("reference_high") if numeric else None,
            reference_text=obs.get("reference_text") or orig.get("reference_range") or "",
            abnormal_flag=obs.get("abnormal_flag") or "",
            observed_at=obs.get("observed_at") or "",
            status=obs.get("status") or "F",
            original_code=orig.get("code") or "",
            original_system=orig.get("coding_system") or "",
            original_text=orig.get("text") or "",
        )


@dataclass(frozen=True)
class CrBioRequest:
    document_root: str  # OID under which this producer numbers its documents
    document_extension: str
    set_extension: str
    version: int
    effective_time: str  # HL7 TS with time zone, e.g. 20250114093000+0100
    patient: Patient
    biologist: Professional
    laboratory: Organisation
    results: tuple[Result, ...]
    order_root: str = ""  # OID of the prescription numbering (ORC-2 placer)
    order_extension: str = ""
    filler_extension: str = ""
    collected_at: str = ""
    chapter_code: str = "18719-5"  # LOINC chapter (default: Biochimie)
    chapter_display: str = "Biochimie"
    local_code_system: str = ""  # OID of the laboratory's local test codes
    confidentiality: str = "N"
    parent_document: tuple[str, str] | None = None  # (root, extension) replaced (RPLC)
    language: str = "fr-FR"
    custodian: Organisation | None = None  # who keeps the document; default: the laboratory
    extra_ids: dict[str, str] = field(default_factory=dict)


# XML 1.0 §2.2 Char: what a document may contain. HL7 v2 fields may carry any other control
# character (a sender's bug, or a \X01\ escape); lxml refuses them, so they are dropped.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: str) -> str:
    """`value` without the characters XML 1.0 cannot carry."""
    return _NOT_XML_CHAR.sub("", value)


def _el(parent: etree._Element, tag: str, attrs: dict[str, str] | None = None,
        text: str | None = None) -> etree._Element:
    e = etree.SubElement(parent, f"{{{V3}}}{tag}")
    for k, v in (attrs or {}).items():
        if v is not None and v != "":
            e.set(k, xml_text(v))
    if text:
        e.text = xml_text(text)
    return e


def _id(parent: etree._Element, root: str, extension: str = "", tag: str = "id") -> None:
    _el(parent, tag, {"root": root, "extension": extension})


def _addr(parent: etree._Element, a: Address) -> None:
    addr = _el(parent, "addr")
    if not (a.street or a.postal_code or a.city):
        addr.set("nullFlavor", "UNK")
        return
    if a.street:
        _el(addr, "streetAddressLine", text=a.street)
    _el(addr, "postalCode", text=a.postal_code or None)
    _el(addr, "city", text=a.city or None)


def _telecom(parent: etree._Element, value: str) -> None:
    if value:
        _el(parent, "telecom", {"value": value, "use": "WP"})
    else:
        _el(parent, "telecom", {"nullFlavor": "UNK"})


def _person_name(parent: etree._Element, p: Professional, tag: str = "assignedPerson") -> None:
    person = _el(parent, tag)
    name = _el(person, "name")
    if p.prefix:
        _el(name, "prefix", text=p.prefix)
    if p.given:
        _el(name, "given", text=p.given)
    _el(name, "family", text=p.family)


def _organisation(parent: etree._Element, tag: str, o: Organisation,
                  with_setting: bool = False) -> etree._Element:
    org = _el(parent, tag)
    _id(org, o.id_root, o.id_extension)
    _el(org, "name", text=o.name)
    _telecom(org, o.telecom)
    _addr(org, o.address)
    if with_setting:
        _el(org, "standardIndustryClassCode", {
            "code": o.practice_setting, "displayName": o.practice_setting_display,
            "codeSystem": PRACTICE_SETTING_OID})
    return org


def _assigned(parent: etree._Element, tag: str, p: Professional, o: Organisation,
              with_setting: bool = False) -> etree._Element:
    ent = _el(parent, tag)
    _id(ent, p.id_root, p.id_extension)
    _el(ent, "code", {"code": p.role_code, "displayName": p.role_display,
                      "codeSystem": PROFESSION_OID})
    _addr(ent, o.address)
    _telecom(ent, o.telecom)
    _person_name(ent, p)
    _organisation(ent, "representedOrganization", o, with_setting)
    return ent


def _dec(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    try:
        return format(Decimal(str(value)).normalize(), "f")
    except InvalidOperation:
        return None


def _ts(value: str, default: str) -> str:
    """CI-SIS timestamps carry the producer's time zone (IVL_TS.sch); a bare local time from the
    ORU gets the zone of the document's effectiveTime."""
    if not value:
        return default
    if "+" in value or "-" in value or len(value) <= 8:
        return value
    zone = default[-5:] if default[-5:-4] in "+-" else "+0000"
    return value + zone


def _pq(parent: etree._Element, tag: str, value: str, unit: str) -> etree._Element:
    return _el(parent, tag, {"value": value, "unit": unit or "1"})


def _result_code(obs: etree._Element, r: Result, req: CrBioRequest) -> None:
    if r.loinc:
        code = _el(obs, "code", {"code": r.loinc, "displayName": r.display or r.loinc,
                                 "codeSystem": LOINC, "codeSystemName": "LOINC"})
        if r.original_code and r.original_code != r.loinc and r.original_system != "LN":
            # The laboratory's own code stays visible next to LOINC (CI-SIS CR-BIO: local codes
            # are carried in translation, with @code and @displayName).
            _el(code, "translation", {"code": r.original_code,
                                      "displayName": r.original_text or r.original_code,
                                      "codeSystem": req.local_code_system})
    else:
        # No LOINC: the local code is only a translation of an "other" code (CRP_non_LOINC
        # example of the ANS).
        code = _el(obs, "code", {"nullFlavor": "OTH"})
        _el(code, "translation", {"code": r.original_code or "UNKNOWN",
                                  "displayName": r.original_text or r.display or r.original_code,
                                  "codeSystem": req.local_code_system})


def _result_value(obs: etree._Element, r: Result) -> None:
    value = _dec(r.value)
    if r.value_type in ("NM", "SN") and value is not None:
        if r.comparator in ("<", "<=", ">", ">="):
            ivl = _el(obs, "value")
            ivl.set(f"{{{XSI}}}type", "IVL_PQ")
            bound = "high" if r.comparator.startswith("<") else "low"
            b = _pq(ivl, bound, value, r.unit)
            b.set("inclusive", "true" if r.comparator.endswith("=") else "false")
        else:
            pq = _pq(obs, "value", value, r.unit)
            pq.set(f"{{{XSI}}}type", "PQ")
    elif r.value:
        st = _el(obs, "value", text=r.value)
        st.set(f"{{{XSI}}}type", "ST")


def _reference_range(obs: etree._Element, r: Result) -> None:
    low, high = _dec(r.reference_low), _dec(r.reference_high)
    if low is None and high is None and not r.reference_text:
        return
    rr = _el(obs, "referenceRange", {"typeCode": "REFV"})
    orange = _el(rr, "observationRange", {"classCode": "OBS", "moodCode": "EVN.CRT"})
    if low is None and high is None:
        _el(orange, "text", text=r.reference_text)
        return
    ivl = _el(orange, "value")
    ivl.set(f"{{{XSI}}}type", "IVL_PQ")
    if low is not None:
        _pq(ivl, "low", low, r.unit)
    if high is not None:
        _pq(ivl, "high", high, r.unit)
    _el(orange, "interpretationCode", {"code": "N", "displayName": "Normal",
                                       "codeSystem": INTERPRETATION})


def _narrative(section: etree._Element, results: list[Result]) -> None:
    text = _el(section, "text")
    table = _el(text, "table", {"border": "0"})
    head = _el(_el(table, "thead"), "tr")
    for h in ("Examen", "Résultat", "Valeurs de référence", "Interprétation"):
        _el(head, "th", text=h)
    body = _el(table, "tbody")
    for i, r in enumerate(results, 1):
        tr = _el(body, "tr")
        td = _el(tr, "td")
        _el(td, "content", {"ID": f"res-{i}"}, r.display or r.original_text or "?")
        shown = f"{r.comparator}{r.value} {r.unit}".strip() if r.value else "non réalisé"
        _el(tr, "td", text=shown)
        _el(tr, "td", text=r.reference_text or "")
        _el(tr, "td", text=r.abnormal_flag or "")


def _pdf(lines: list[str]) -> bytes:
    """A one-page PDF 1.4 of the report's text (FR-Document-PDF-copie is mandatory in CR-BIO
    2024.01). Hand-written, Helvetica with WinAnsi so that French accents render."""
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    content = ["BT", "/F1 10 Tf", "50 800 Td", "14 TL"]
    for line in lines[:55]:
        content.append(f"({esc(line)}) '")
    content.append("ET")
    stream = "\n".join(content).encode("cp1252", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
            .encode())
    return bytes(out)


def _uuid_like(*parts: str) -> str:
    """Stable UUID-shaped ids for sections (deterministic: a replay builds the same bytes)."""
    h = hashlib.sha256("|".join(parts).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}".upper()


def build_crbio(req: CrBioRequest) -> bytes:
    """The CR-BIO document as UTF-8 bytes. Results with status D (deleted) are left out; X
    (cannot be obtained) become aborted observations without a value."""
    now = req.effective_time
    results = [r for r in req.results if r.status != "D"]
    doc = etree.Element(f"{{{V3}}}ClinicalDocument", nsmap=NSMAP)
    _el(doc, "realmCode", {"code": "FR"})
    _el(doc, "typeId", {"root": "2.16.840.1.113883.1.3", "extension": "POCD_HD000040"})
    for root in ("2.16.840.1.113883.2.8.2.1", "1.2.250.1.213.1.1.1.1",
                 "1.3.6.1.4.1.19376.1.3.3"):
        _el(doc, "templateId", {"root": root})
    _el(doc, "templateId", {"root": "1.2.250.1.213.1.1.1.55", "extension": "2024.01"})
    _id(doc, req.document_root, req.document_extension)
    _el(doc, "code", {"code": "11502-2", "codeSystem": LOINC, "codeSystemName": "LOINC",
                      "displayName": "CR d'examens biologiques"})
    _el(doc, "title", text="Compte rendu d'examens biologiques")
    _el(doc, "effectiveTime", {"value": now})
    conf = {"N": "Normal", "R": "Restreint", "V": "Très restreint"}
    _el(doc, "confidentialityCode", {"code": req.confidentiality,
                                     "displayName": conf.get(req.confidentiality, ""),
                                     "codeSystem": CONFIDENTIALITY})
    _el(doc, "languageCode", {"code": req.language})
    _id(doc, req.document_root, req.set_extension, tag="setId")
    _el(doc, "versionNumber", {"value": str(req.version)})

    # recordTarget: INS first (CI-SIS: the INS with its OID identifies the patient in the DMP).
    p = req.patient
    role = _el(_el(doc, "recordTarget"), "patientRole")
    _id(role, p.ins_oid, p.ins)
    for root, ext in p.local_ids:
        _id(role, root, ext)
    _el(role, "addr", {"nullFlavor": "UNK"})
    _el(role, "telecom", {"nullFlavor": "UNK"})
    pat = _el(role, "patient", {"classCode": "PSN"})
    name = _el(pat, "name")
    _el(name, "family", {"qualifier": "BR"}, p.family)
    if p.given:
        _el(name, "given", {"qualifier": "BR"}, p.given)
    gender = {"M": ("M", "Masculin"), "F": ("F", "Féminin")}.get(p.gender)
    if gender:
        _el(pat, "administrativeGenderCode", {"code": gender[0], "displayName": gender[1],
                                              "codeSystem": "2.16.840.1.113883.5.1"})
    else:
        _el(pat, "administrativeGenderCode", {"nullFlavor": "UNK"})
    _el(pat, "birthTime", {"value": p.birth_date} if p.birth_date else {"nullFlavor": "UNK"})

    bio, lab = req.biologist, req.laboratory
    author = _el(doc, "author")
    _el(author, "time", {"value": now})
    _assigned(author, "assignedAuthor", bio, lab)
    cust = _el(_el(doc, "custodian"), "assignedCustodian")
    _organisation(cust, "representedCustodianOrganization", req.custodian or lab)
    legal = _el(doc, "legalAuthenticator")
    _el(legal, "time", {"value": now})
    _el(legal, "signatureCode", {"code": "S"})
    _assigned(legal, "assignedEntity", bio, lab, with_setting=True)

    if req.order_extension:
        order = _el(_el(doc, "inFulfillmentOf"), "order")
        _id(order, req.order_root or req.document_root, req.order_extension)

    event = _el(_el(doc, "documentationOf"), "serviceEvent")
    if req.filler_extension:
        _id(event, req.document_root, req.filler_extension)
    _el(event, "code", {"code": req.chapter_code, "displayName": req.chapter_display,
                        "codeSystem": LOINC, "codeSystemName": "LOINC"})
    lab_status = etree.SubElement(event, f"{{{LAB}}}statusCode")
    lab_status.set("code", "completed")
    et = _el(event, "effectiveTime")
    low = _ts(req.collected_at, now)
    _el(et, "low", {"value": low})
    if now > low:
        _el(et, "high", {"value": now})
    perf = _el(event, "performer", {"typeCode": "PRF"})
    _el(perf, "templateId", {"root": "1.3.6.1.4.1.19376.1.3.3.1.7"})
    _el(_el(perf, "time"), "high", {"value": now})
    _assigned(perf, "assignedEntity", bio, lab, with_setting=True)

    if req.parent_document:
        # CDA R2 §4.2.3.1: a new version replaces its parent (RPLC); same setId, version + 1.
        rel = _el(doc, "relatedDocument", {"typeCode": "RPLC"})
        _id(_el(rel, "parentDocument"), *req.parent_document)

    enc = _el(_el(doc, "componentOf"), "encompassingEncounter")
    _el(_el(enc, "effectiveTime"), "low", {"value": low})
    resp = _el(_el(enc, "responsibleParty"), "assignedEntity")
    _id(resp, bio.id_root, bio.id_extension)
    _el(resp, "code", {"code": bio.role_code, "displayName": bio.role_display,
                       "codeSystem": PROFESSION_OID})
    _person_name(resp, bio)
    _organisation(resp, "representedOrganization", lab)
    fac = _el(_el(enc, "location"), "healthCareFacility")
    _el(fac, "code", {"code": lab.facility_type, "displayName": lab.facility_type_display,
                      "codeSystem": FACILITY_TYPE_OID})

    body = _el(_el(doc, "component"), "structuredBody")
    chapter = _el(_el(body, "component"), "section")
    _el(chapter, "templateId", {"root": "1.3.6.1.4.1.19376.1.3.3.2.1"})  # IHE PaLM specialty
    _el(chapter, "templateId", {"root": "1.2.250.1.213.1.1.2.70"})  # FR-CR-BIO-Chapitre
    _el(chapter, "code", {"code": req.chapter_code, "displayName": req.chapter_display,
                          "codeSystem": LOINC, "codeSystemName": "LOINC"})
    _el(chapter, "title", text=req.chapter_display.upper())
    sub = _el(_el(chapter, "component"), "section")
    _el(sub, "templateId", {"root": "1.3.6.1.4.1.19376.1.3.3.2.2"})  # IHE PaLM report item
    _el(sub, "templateId", {"root": "1.2.250.1.213.1.1.2.71"})  # FR-CR-BIO-Sous-Chapitre
    _el(sub, "code", {"code": req.chapter_code, "displayName": req.chapter_display,
                      "codeSystem": LOINC, "codeSystemName": "LOINC"})
    _narrative(sub, results)
    entry = _el(sub, "entry", {"typeCode": "DRIV"})
    _el(entry, "templateId", {"root": "1.3.6.1.4.1.19376.1.3.1"})
    _el(entry, "templateId", {"root": "1.2.250.1.213.1.1.3.21"})
    act = _el(entry, "act", {"classCode": "ACT", "moodCode": "EVN"})
    _el(act, "code", {"code": req.chapter_code, "displayName": req.chapter_display,
                      "codeSystem": LOINC, "codeSystemName": "LOINC"})
    _el(act, "statusCode", {"code": "completed"})
    flags = interpretation_codes()
    for i, r in enumerate(results, 1):
        obs = _el(_el(act, "entryRelationship", {"typeCode": "COMP"}), "observation",
                  {"classCode": "OBS", "moodCode": "EVN"})
        _el(obs, "templateId", {"root": "1.3.6.1.4.1.19376.1.3.1.6"})
        _el(obs, "templateId", {"root": "1.2.250.1.213.1.1.3.80"})
        _result_code(obs, r, req)
        code = obs.find(f"{{{V3}}}code")
        assert code is not None
        ref = _el(_el(etree.Element("x"), "originalText"), "reference", {"value": f"#res-{i}"})
        code.insert(0, ref.getparent())
        _el(obs, "statusCode", {"code": "aborted" if r.status == "X" else "completed"})
        _el(obs, "effectiveTime", {"value": _ts(r.observed_at, low)})
        if r.status != "X":
            _result_value(obs, r)
        if r.abnormal_flag in flags and r.status != "X":
            _el(obs, "interpretationCode", {"code": r.abnormal_flag,
                                            "displayName": flags[r.abnormal_flag],
                                            "codeSystem": INTERPRETATION})
        if r.status != "X":
            _reference_range(obs, r)

    _pdf_section(body, req, results)
    return etree.tostring(doc, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _pdf_section(body: etree._Element, req: CrBioRequest, results: list[Result]) -> None:
    lines = ["Compte rendu d'examens biologiques", req.laboratory.name,
             f"Patient : {req.patient.family} {req.patient.given}".strip(), ""]
    for r in results:
        value = f"{r.comparator}{r.value} {r.unit}".strip() if r.value else "non réalisé"
        ref = f"  ({r.reference_text})" if r.reference_text else ""
        lines.append(f"{r.display or r.original_text}: {value}{ref} {r.abnormal_flag}".strip())
    pdf = base64.b64encode(_pdf(lines)).decode("ascii")
    key = f"{req.document_root}|{req.document_extension}"
    section = _el(_el(body, "component"), "section")
    _el(section, "templateId", {"root": "1.2.250.1.213.1.1.2.243"})  # FR-Document-PDF-copie
    _id(section, _uuid_like(key, "pdf-section"))
    _el(section, "code", {"code": "55108-5", "displayName": "Copie du document",
                          "codeSystem": LOINC, "codeSystemName": "LOINC"})
    _el(section, "title", text="Copie du document")
    text = _el(section, "text")
    row = _el(_el(_el(text, "table", {"border": "0"}), "tbody"), "tr")
    _el(_el(row, "td"), "renderMultiMedia", {"referencedObject": "doc-1"})
    org = _el(_el(section, "entry"), "organizer", {"classCode": "CLUSTER", "moodCode": "EVN"})
    _el(org, "templateId", {"root": "1.2.250.1.213.1.1.3.18"})  # FR-Document-attache
    _id(org, _uuid_like(key, "pdf-organizer"))
    _el(org, "code", {"code": "55107-7", "displayName": "Document attaché",
                      "codeSystem": LOINC, "codeSystemName": "LOINC"})
    _el(org, "statusCode", {"code": "completed"})
    obs = _el(_el(org, "component"), "observation", {"classCode": "OBS", "moodCode": "EVN"})
    for root in ("1.3.6.1.4.1.19376.1.5.3.1.4.13", "1.2.250.1.213.1.1.3.48",
                 "1.2.250.1.213.1.1.3.48.18"):
        _el(obs, "templateId", {"root": root})
    _id(obs, _uuid_like(key, "pdf-type"))
    _el(obs, "code", {"code": "69764-9", "displayName": "Type de document",
                      "codeSystem": LOINC, "codeSystemName": "LOINC"})
    _el(obs, "statusCode", {"code": "completed"})
    _el(obs, "effectiveTime", {"nullFlavor": "NA"})
    v = _el(obs, "value", {"code": "55108-5", "displayName": "Copie du document",
                           "codeSystem": LOINC, "codeSystemName": "LOINC"})
    v.set(f"{{{XSI}}}type", "CD")
    media = _el(_el(org, "component"), "observationMedia",
                {"classCode": "OBS", "moodCode": "EVN", "ID": "doc-1"})
    _el(media, "value", {"mediaType": "application/pdf", "representation": "B64"}, pdf)
