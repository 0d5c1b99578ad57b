"""What a reader may see of an item: DMP masking codes and CDA confidentiality.

Rules (docs/timeline.md, "Masking"):
- MASQUE_PS = Y (masked to health professionals, DMP): hidden from every reader except the
  item's author — not listed, and its document answers 404 as if it did not exist.
- confidentialityCode V (very restricted, HL7 v3 Confidentiality): shown only to its author
  and to clinicians with an explicit grant, not to the circle derived from ADT.
- R and N: shown to the care circle.
- INVISIBLE_PATIENT and INVISIBLE_REPRESENTANTS_LEGAUX concern the patient and legal
  representatives, who have no access to Parcours: stored, returned as flags, and carried to
  the DMP destination (issue #7).
"""

from __future__ import annotations

from typing import Any

from engine.timeline.auth import Principal


def visible(item: dict[str, Any], who: Principal, granted: bool) -> bool:
    author = item.get("author_id")
    is_author = bool(author) and author == who.professional_id
    if item.get("masked_ps") and not is_author:
        return False
    return not (item.get("confidentiality") == "V" and not (is_author or granted))
