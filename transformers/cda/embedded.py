"""A CDA document carried in HL7 v2 (ORU^R01 / MDM^T02/T04/T10, OBX value type ED).

CI-SIS "Transmission de documents CDA en HL7 v2": the CDA is base64 in OBX-5.5 of the OBX
whose OBX-3 is the document type; OBX-11 says what to do with it (F: new document, C: it
replaces the previous version, D: delete it); other OBX with OBX-3.3 = MetaDMPMSS carry the
DMP/MSSanté options (masking, recipients).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from transformers.hl7.reader import HL7ReadError, parse_message

MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
ACTIONS = {"F": "submit", "P": "submit", "C": "replace", "D": "delete"}
# MetaDMPMSS flag → CI-SIS confidentialityCode (JDV_J08, 1.2.250.1.213.1.1.4.13).
MASKING = {
    "MASQUE_PS": "MASQUE_PS",
    "INVISIBLE_PATIENT": "INVISIBLE_PATIENT",
    "INVISIBLE_REP_LEGAUX": "INVISIBLE_REPRESENTANTS_LEGAUX",
}


class NoEmbeddedDocument(ValueError):
    pass


@dataclass
class EmbeddedDocument:
    cda: bytes
    action: str  # submit / replace / delete
    masking: list[str] = field(default_factory=list)
    for_dmp: bool = True  # DESTDMP (absent: yes)
    secret_connection: bool = False  # CONNEXION_SECRETE
    patient_class: str = ""  # PV1-2
    message_type: str = ""


def _b64(data: str) -> bytes:
    data = "".join(data.split())
    if len(data) * 3 // 4 > MAX_DOCUMENT_BYTES:
        raise NoEmbeddedDocument(f"embedded document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        # Real senders drop the padding (ANS deletion sample): restore it.
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise NoEmbeddedDocument(f"OBX-5 is not valid base64: {exc}") from None


def document_from_hl7(text: str) -> EmbeddedDocument:
    try:
        msg = parse_message(text)
    except HL7ReadError as exc:
        raise NoEmbeddedDocument(f"not an HL7 v2 message: {exc}") from None
    doc: bytes | None = None
    action = "submit"
    masking: list[str] = []
    for_dmp = True
    secret = False
    for obx in msg.segments_named("OBX"):
        system = obx.get(3, 1, 3)
        code = obx.get(3, 1, 1)
        if system == "MetaDMPMSS":
            yes = obx.get(5, 1, 1).upper() == "Y"
            if code in MASKING and yes:
                masking.append(MASKING[code])
            elif code == "DESTDMP":
                for_dmp = yes
            elif code == "CONNEXION_SECRETE":
                secret = yes
            continue
        if obx.get(2) == "ED" and doc is None:
            doc = _b64(obx.get_raw(5, 1, 5))
            action = ACTIONS.get(obx.get(11), "submit")
    if doc is None:
        raise NoEmbeddedDocument("no OBX of type ED carrying a document")
    if not doc.lstrip().startswith(b"<"):
        raise NoEmbeddedDocument("the OBX-5 document is not XML (a CDA is expected)")
    return EmbeddedDocument(doc, action, masking, for_dmp, secret, msg.get("PV1-2"),
                            msg.get("MSH-9.1"))
