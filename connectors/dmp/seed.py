"""Documents `parcours dmp-sim --seed INS` puts in a patient's DMP, so consultation can be
tried without feeding one first.

Why these four: a consumer must show several types and classes (imaging report, lab report,
discharge letter), a restricted confidentiality, and must not show a replaced version unless
asked (the lab report's first version is Deprecated, ITI TF-3 §4.2.2.2.2). Codes come from the
CI-SIS value sets copied in data/jdv, so the metadata is what the DMP would accept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from xml.sax.saxutils import escape

from .metadata import (
    APPROVED,
    CLASS_BY_TYPE,
    CLASS_SCHEME,
    DEPRECATED,
    FORMAT_BY_TEMPLATE,
    FORMAT_CISIS,
    Author,
    Code,
    DocumentEntry,
    value_set,
    xcn,
    xon,
)

SEED_ROOT = "1.2.250.1.213.1.1.9.99"  # document ids of seeded documents (test arc)
LOINC = "2.16.840.1.113883.6.1"
CONFIDENTIALITY = "2.16.840.1.113883.5.25"
IDNPS = "1.2.250.1.71.4.2.1"
IDNST = "1.2.250.1.71.4.2.2"


@dataclass(frozen=True)
class _Seed:
    n: int
    type_code: str
    title: str
    created: str  # DTM, UTC
    confidentiality: str
    status: str
    text: str
    format_template: str = ""
    replaced_by: int = 0


SEEDS = (
    _Seed(1, "18748-4", "Scanner thoracique", "20261002101500", "N", APPROVED,
          "Pas d'anomalie du parenchyme pulmonaire."),
    _Seed(2, "11502-2", "Bilan biologique (version 1)", "20261114083000", "N", DEPRECATED,
          "Glycémie à jeun 5,1 mmol/L.", "1.2.250.1.213.1.1.1.55", replaced_by=3),
    _Seed(3, "11502-2", "Bilan biologique", "20261115090000", "N", APPROVED,
          "Glycémie à jeun 5,3 mmol/L.", "1.2.250.1.213.1.1.1.55"),
    _Seed(4, "11490-0", "Lettre de liaison à la sortie", "20260620160000", "R", APPROVED,
          "Sortie à domicile, suivi par le médecin traitant."),
)


def _jdv(name: str, code: str) -> Code:
    for (c, system), display in value_set(name).items():
        if c == code:
            return Code(c, system, display)
    raise KeyError(f"{code} is not in {name}")


def _cda(unique_id: str, patient_cx: str, s: _Seed) -> bytes:
    """A small CDA R2 document: header enough for a reader, one paragraph of body."""
    ins, _, rest = patient_cx.partition("^^^&")
    oid = rest.split("&", 1)[0]
    root, _, ext = unique_id.partition("^")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3">'
        '<typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>'
        f'<id root="{root}"{f" extension={chr(34)}{ext}{chr(34)}" if ext else ""}/>'
        f'<code code="{s.type_code}" codeSystem="{LOINC}"/>'
        f"<title>{escape(s.title)}</title>"
        f'<effectiveTime value="{s.created}+0000"/>'
        f'<confidentialityCode code="{s.confidentiality}" codeSystem="{CONFIDENTIALITY}"/>'
        '<languageCode code="fr-FR"/>'
        f'<recordTarget><patientRole><id root="{oid}" extension="{ins}"/></patientRole>'
        "</recordTarget>"
        "<component><structuredBody><component><section>"
        f"<title>{escape(s.title)}</title><text><paragraph>{escape(s.text)}</paragraph></text>"
        "</section></component></structuredBody></component></ClinicalDocument>\n"
    ).encode()


def seed_documents(patient_cx: str, repository_id: str) -> list[tuple[DocumentEntry, bytes]]:
    """The seeded entries of one patient (CX with the INS) and their documents."""
    ins = patient_cx.split("^", 1)[0]
    specialty = _jdv("JDV_J01_XdsAuthorSpecialty_CISIS", "G15_10/SM26")
    author = Author(
        person=xcn("810001234567", "MARTIN", "Claire", IDNPS, "Dr"),
        institutions=(xon("Hôpital Saint-Louis", "1750100000", IDNST),),
        specialties=(f"{specialty.code}^{specialty.display}^{specialty.scheme}",))
    out = []
    for s in SEEDS:
        uid = f"{SEED_ROOT}.{ins}.{s.n}"
        content = _cda(uid, patient_cx, s)
        cls = CLASS_BY_TYPE.get(s.type_code, ("10", "Compte rendu"))
        fmt = FORMAT_BY_TEMPLATE.get(s.format_template, (
            "urn:asip:ci-sis:2010", FORMAT_CISIS, "Document à corps structuré"))
        entry = DocumentEntry(
            unique_id=uid, patient_id=patient_cx, source_patient_id=patient_cx,
            source_patient_info=[f"PID-3|{patient_cx}"],
            class_code=Code(cls[0], CLASS_SCHEME, cls[1]),
            type_code=_jdv("JDV_J07_XdsTypeCode_CISIS", s.type_code),
            format_code=Code(*fmt),
            facility_type=_jdv("JDV_J02_XdsHealthcareFacilityTypeCode_CISIS", "SA01"),
            practice_setting=_jdv("JDV_J04_XdsPracticeSettingCode_CISIS", "ETABLISSEMENT"),
            confidentiality=[_jdv("JDV_J08_XdsConfidentialityCode_CISIS", s.confidentiality)],
            creation_time=s.created, title=s.title,
            hash=hashlib.sha1(content).hexdigest(), size=len(content), authors=[author],
            legal_authenticator=author.person, service_start=s.created,
            service_stop=s.created, status=s.status, repository_id=repository_id,
            comments=f"Document d'exemple de dmp-sim n°{s.n}")
        out.append((entry, content))
    return out
