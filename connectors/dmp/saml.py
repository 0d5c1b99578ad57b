"""VIHF: the SAML 2.0 assertion the DMP requires in WS-Security (CI-SIS "Volet Gestion
Sécurité" / DMP integration guide; mapping from the ANS HL7 v2 CDA transmission guide).

Why it is signed here, with the structure's certificate ("certificat de cachet"): Parcours
feeds the DMP in indirect authentication mode, as an automated process acting for a care
structure; the DMP trusts the assertion because the structure signed it (XML-DSig enveloped,
RSA-SHA256, exclusive c14n, as in the ANS example).

Attribute names and values follow the ANS "Mapping VIHF pour le DMP" table of the HL7 v2 CDA
transmission guide (ansforge/IG-hl7v2-volet-transmission-document-cda-r2,
input/pagecontent/mapping.md, v2.1.3) and its "Exemple d'un VIHF avec automate":
Identifiant_Structure, Secteur_Activite (JDV_J61), Subject/NameID, xspa subject-id, xacml
subject:role (AUTOMATE, 1.2.250.1.213.1.1.4.6), VIHF_Version (the table says the constant
"4.0"; its example still shows "3.0"), Authentification_Mode = INDIRECTE, xacml resource-id
(INS as CX), Ressource_URN = urn:dmp, xspa purposeofuse (code "normal",
1.2.250.1.213.1.1.4.248), LPS_ID (optional), LPS_Nom, LPS_Version, LPS_ID_HOMOLOGATION_DMP,
and `urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code`, required when a
secret connection to the DMP is asked (MetaDMPMSS CONNEXION_SECRETE=Y).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from cryptography import x509
from lxml import etree
from signxml import SignatureConfiguration, XMLSigner, XMLVerifier
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod

from safexml import copy

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XS = "http://www.w3.org/2001/XMLSchema"
V3 = "urn:hl7-org:v3"
X509_SUBJECT = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"


@dataclass(frozen=True)
class Role:
    code: str
    code_system: str
    display: str = ""


# TRE_R248 "mode d'accès" (1.2.250.1.213.1.1.4.248): the purpose of use a VIHF declares.
ACCESS_MODE_SYSTEM = "1.2.250.1.213.1.1.4.248"
NORMAL_ACCESS = Role("normal", ACCESS_MODE_SYSTEM, "Accès normal")
BREAK_GLASS = Role("bris_de_glace", ACCESS_MODE_SYSTEM, "Accès en bris de glace")
PROFESSION_SYSTEM = "1.2.250.1.71.1.2.7"  # TRE_G15 professions (JDV_J65 subject roles)
SPECIALTY_SYSTEM = "1.2.250.1.71.4.2.5"  # TRE_R01 RPPS specialties (JDV_J65 subject roles)


@dataclass
class VIHFIdentity:
    """Who feeds the DMP. Defaults describe an automated feed ("traitement automatisé")."""

    name_id: str  # Subject/NameID: id of the person responsible for the processing
    subject_name: str  # subject-id: software name, model and service
    structure_id: str  # Identifiant_Structure (FINESS / SIRET of the structure)
    sector: str = "SA25^1.2.250.1.71.4.2.4"  # Secteur_Activite (JDV_J61)
    roles: list[Role] = field(default_factory=lambda: [Role("AUTOMATE", "1.2.250.1.213.1.1.4.6",
                                                            "Automate")])
    lps_name: str = "Parcours"
    lps_version: str = "0.1"
    lps_homologation: str = ""  # LPS_ID_HOMOLOGATION_DMP, given by the ANS
    lps_id: str = ""  # LPS_ID (optional in the ANS table): this installation's identifier
    purpose_of_use: Role = NORMAL_ACCESS
    authn_context: str = "urn:oasis:names:tc:SAML:2.0:ac:classes:unspecified"
    vihf_version: str = "4.0"  # ANS mapping table: constant "4.0"
    # Value of the confidentiality-code attribute for a secret connection. The ANS table
    # names the attribute and when it is required, not its value: the J08 code below
    # ("invisible to the legal representatives", the minors' case) is our reading, to be
    # confirmed on the DMP test platform; `identity.secret_connection_code` overrides it.
    secret_connection: Role = Role("INVISIBLE_REPRESENTANTS_LEGAUX", "1.2.250.1.213.1.1.4.13",
                                   "Non visible par les représentants légaux du patient")


def reader_identity(structure: VIHFIdentity, *, name_id: str, subject_name: str,
                    roles: list[Role], break_glass: bool = False) -> VIHFIdentity:
    """The VIHF of a professional reading the DMP through Parcours: the structure, its
    software and its signing certificate stay the feed's; the subject becomes the reader
    (NameID = their national id, IDNPS; subject-id = their name; roles = profession and,
    for doctors and pharmacists, specialty, JDV_J65) and the purpose of use says whether
    this is a normal access or "bris de glace" (TRE_R248)."""
    return replace(structure, name_id=name_id, subject_name=subject_name, roles=list(roles),
                   purpose_of_use=BREAK_GLASS if break_glass else NORMAL_ACCESS)


def coded(text: str) -> Role:
    """"code^codeSystem^displayName" (the routes.yaml form) → a coded value."""
    parts = text.split("^")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"coded value {text!r}: write code^codeSystemOID[^displayName]")
    return Role(parts[0], parts[1], parts[2] if len(parts) > 2 else "")


def _attr(stmt: etree._Element, name: str, value: str | etree._Element) -> None:
    a = etree.SubElement(stmt, f"{{{SAML}}}Attribute", Name=name)
    v = etree.SubElement(a, f"{{{SAML}}}AttributeValue")
    if isinstance(value, str):
        v.text = value
    else:
        v.append(value)


def _coded(tag: str, r: Role) -> etree._Element:
    el = etree.Element(f"{{{V3}}}{tag}", nsmap={None: V3, "xsi": XSI})
    el.set(f"{{{XSI}}}type", "CE")
    el.set("code", r.code)
    el.set("codeSystem", r.code_system)
    if r.display:
        el.set("displayName", r.display)
    return el


def issuer_dn(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.subject.rfc4514_string()


def build_assertion(identity: VIHFIdentity, patient_cx: str, cert_pem: bytes, key_pem: bytes,
                    *, now: datetime | None = None, lifetime: timedelta = timedelta(minutes=5),
                    confidential_access: bool = False) -> etree._Element:
    """A signed VIHF assertion for one patient (resource-id = the INS as CX)."""
    now = now or datetime.now(UTC)
    instant = now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    aid = f"_{uuid.uuid4()}"
    a = etree.Element(f"{{{SAML}}}Assertion", nsmap={None: SAML, "xsi": XSI, "xs": XS},
                      ID=aid, IssueInstant=instant, Version="2.0")
    issuer = etree.SubElement(a, f"{{{SAML}}}Issuer", Format=X509_SUBJECT)
    issuer.text = issuer_dn(cert_pem)
    # SAML core §5.4.1: the enveloped signature follows Issuer (signxml fills the placeholder).
    etree.SubElement(a, f"{{{DS}}}Signature", nsmap={"ds": DS}, Id="placeholder")
    subject = etree.SubElement(a, f"{{{SAML}}}Subject")
    etree.SubElement(subject, f"{{{SAML}}}NameID").text = identity.name_id
    etree.SubElement(a, f"{{{SAML}}}Conditions", NotBefore=(now - timedelta(seconds=30)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"), NotOnOrAfter=(now + lifetime).strftime("%Y-%m-%dT%H:%M:%SZ"))
    authn = etree.SubElement(a, f"{{{SAML}}}AuthnStatement", AuthnInstant=instant)
    ctx = etree.SubElement(authn, f"{{{SAML}}}AuthnContext")
    etree.SubElement(ctx, f"{{{SAML}}}AuthnContextClassRef").text = identity.authn_context
    stmt = etree.SubElement(a, f"{{{SAML}}}AttributeStatement")
    _attr(stmt, "VIHF_Version", identity.vihf_version)
    _attr(stmt, "Authentification_Mode", "INDIRECTE")
    _attr(stmt, "Identifiant_Structure", identity.structure_id)
    _attr(stmt, "Secteur_Activite", identity.sector)
    _attr(stmt, "urn:oasis:names:tc:xspa:1.0:subject:subject-id", identity.subject_name)
    for role in identity.roles:
        _attr(stmt, "urn:oasis:names:tc:xacml:2.0:subject:role", _coded("Role", role))
    _attr(stmt, "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse",
          _coded("PurposeOfUse", identity.purpose_of_use))
    _attr(stmt, "urn:oasis:names:tc:xacml:2.0:resource:resource-id", patient_cx)
    _attr(stmt, "Ressource_URN", "urn:dmp")
    if confidential_access:
        # ANS mapping table: required when a secret connection to the DMP is asked.
        _attr(stmt, "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code",
              _coded("ConfidentialityCode", identity.secret_connection))
    if identity.lps_id:
        _attr(stmt, "LPS_ID", identity.lps_id)
    _attr(stmt, "LPS_Nom", identity.lps_name)
    _attr(stmt, "LPS_Version", identity.lps_version)
    if identity.lps_homologation:
        _attr(stmt, "LPS_ID_HOMOLOGATION_DMP", identity.lps_homologation)
    signer = XMLSigner(
        signature_algorithm=SignatureMethod.RSA_SHA256,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    return signer.sign(a, key=key_pem, cert=cert_pem.decode("ascii"), reference_uri=f"#{aid}")


def assertion_attributes(assertion: etree._Element) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in assertion.iter(f"{{{SAML}}}Attribute"):
        values = []
        for v in a.findall(f"{{{SAML}}}AttributeValue"):
            values.append(v.text.strip() if v.text and v.text.strip() else
                          (v[0].get("code", "") if len(v) else ""))
        out[a.get("Name", "")] = values
    return out


class InvalidAssertion(ValueError):
    pass


def verify_assertion(assertion: etree._Element, cert_pem: bytes) -> dict[str, list[str]]:
    """Check the signature against the expected certificate and the validity window; returns
    the attributes. Raises InvalidAssertion with a reason a DMP operator would understand."""
    standalone = copy(assertion)
    try:
        XMLVerifier().verify(
            standalone, x509_cert=cert_pem.decode("ascii"),
            expect_config=SignatureConfiguration(
                signature_methods=frozenset({SignatureMethod.RSA_SHA256}),
                digest_algorithms=frozenset({DigestAlgorithm.SHA256})),
        )
    except Exception as exc:  # signxml raises InvalidSignature/InvalidInput/…
        raise InvalidAssertion(f"VIHF signature invalid: {exc}") from None
    cond = standalone.find(f"{{{SAML}}}Conditions")
    if cond is not None and cond.get("NotOnOrAfter"):
        end = datetime.strptime(cond.get("NotOnOrAfter", ""), "%Y-%m-%dT%H:%M:%SZ")
        if end.replace(tzinfo=UTC) < datetime.now(UTC):
            raise InvalidAssertion("VIHF assertion expired")
    return assertion_attributes(standalone)
