"""What an operator sees of a raw message: masked and very restricted content is redacted.

A document the sender masked (CI-SIS MetaDMPMSS: MASQUE_PS, INVISIBLE_PATIENT,
INVISIBLE_REP_LEGAUX = Y) or marked very restricted (CDA confidentialityCode V, HL7 v3
Confidentiality) is hidden by /api/v1 even from most clinicians; an operator's raw view must
not be the way around it (issue #17). Operators keep what their work needs — type, sender,
control id, status, ACK, deliveries — and see the content only after a break-glass: an
explicit action with a written reason, audited, valid for one message, for one user, for a
short time.
"""

from __future__ import annotations

from typing import Any

from safexml import UnsafeXML, parse
from transformers.cda.embedded import NoEmbeddedDocument, document_from_hl7
from transformers.cda.header import NotCDA, read_header

BREAK_GLASS_SECONDS = 15 * 60
# The audit row of a break-glass is its grant (auth_adapter.break_glass_open reads it back).
GRANT_ACTION = "ui.break_glass"
MIN_REASON_CHARS = 10
# Types that can carry a CDA in OBX-5 (CI-SIS "Transmission de documents CDA en HL7 v2").
_DOCUMENT_CARRIERS = ("MDM", "ORU")


def sensitivity(raw: bytes, message_type: str | None) -> list[str]:
    """Why this message's content is withheld from operators ([] when it is not)."""
    reasons: list[str] = []
    cda: bytes | None = None
    if message_type == "CDA":
        cda = raw
    elif message_type in _DOCUMENT_CARRIERS:
        try:
            doc = document_from_hl7(raw.decode("utf-8", "replace"))
        except NoEmbeddedDocument:
            return []
        reasons += doc.masking
        cda = doc.cda
    if cda is not None:
        try:
            if read_header(parse(cda)).confidentiality == "V":
                reasons.append("confidentiality V")
        except (UnsafeXML, NotCDA):
            pass
    return reasons


def redacted_view(reasons: list[str]) -> dict[str, Any]:
    """What replaces the raw text and the segment tree while the content is withheld."""
    return {"raw": f"[content withheld: {', '.join(reasons)} — break the glass to see it]",
            "tree": [], "tree_error": "content withheld from operators"}
