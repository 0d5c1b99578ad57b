"""RRI^I12 — the return referral information a support structure sends to the requester
(HL7 v2.5.1 §11.3.2: MSH, MSA, RF1, PRD, PID), built by string assembly like the ACK.

RF1-1 carries the request's status (table 0283: P pending, A accepted, R rejected,
E expired) and RF1-6 the requester's own referral identifier, so the requester's system
files the answer on its request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .ack import ack_timestamp
from .encoding import Encoding
from .escape import escape

DEFAULT_ENCODING = Encoding()


def _xpn(p: dict[str, Any], enc: Encoding) -> str:
    return enc.component.join([escape(p.get("family") or "", enc),
                               escape(p.get("given") or "", enc)]).rstrip(enc.component)


def _hd(ident: dict[str, str], enc: Encoding) -> str:
    """CX-4 assigning authority (HD): namespace, then the OID as universal id (type ISO)."""
    namespace, authority = ident.get("namespace") or "", ident.get("authority") or ""
    if not authority or authority == namespace:
        return escape(namespace or authority, enc)
    s = enc.subcomponent
    return f"{escape(namespace, enc)}{s}{escape(authority, enc)}{s}ISO"


def _prd(p: dict[str, Any], enc: Encoding) -> str:
    f, c, r = enc.field, enc.component, enc.repetition
    ids = r.join(f"{escape(i['value'], enc)}{c}{escape(i.get('type') or '', enc)}"
                 for i in p.get("identifiers") or [])
    return f.join(["PRD", escape(p.get("role") or "", enc), _xpn(p, enc), "", "", "", "", ids])


def build_rri(*, control_id: str, in_reply_to: str, status_code: str,
              referral_id: dict[str, str], patient_ids: Sequence[dict[str, str]],
              providers: Sequence[dict[str, Any]], sending: tuple[str, str],
              receiving: tuple[str, str], text: str = "", version: str = "2.5",
              processing_id: str = "P", timestamp: str | None = None) -> str:
    """One RRI^I12, segments separated by CR. `in_reply_to` is the MSH-10 of the REF it
    answers (MSA-2); '' for a later status change, which carries no MSA (optional in
    RRI_I12, §11.3.2: there is no message it acknowledges)."""
    enc = DEFAULT_ENCODING
    f, c = enc.field, enc.component
    msh = f.join(["MSH", enc.msh2, escape(sending[0], enc), escape(sending[1], enc),
                  escape(receiving[0], enc), escape(receiving[1], enc),
                  timestamp or ack_timestamp(), "", f"RRI{c}I12{c}RRI_I12", control_id,
                  processing_id, version])
    msa = f.join(["MSA", "AA", escape(in_reply_to, enc)]
                 + ([escape(text[:80], enc)] if text else []))
    ident = f"{escape(referral_id['value'], enc)}{c}{c}{escape(referral_id['authority'], enc)}"
    rf1 = f.join(["RF1", status_code, "", "", "", "", ident])
    cx = enc.repetition.join(
        f"{escape(i['value'], enc)}{c}{c}{c}{_hd(i, enc)}{c}{escape(i.get('type') or 'PI', enc)}"
        for i in patient_ids)
    pid = f.join(["PID", "1", "", cx])
    head = [msh, msa] if in_reply_to else [msh]
    return "\r".join([*head, rf1, *(_prd(p, enc) for p in providers), pid])
