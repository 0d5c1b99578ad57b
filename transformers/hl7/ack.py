"""Acknowledgement messages (HL7 v2.5.1 §2.9 and §2.14.1 ACK, MSA §2.15.8, ERR §2.15.5).

Built by string assembly rather than through python-hl7: intake builds one ACK per message
on the hot path, and `bench/ack.py` measured python-hl7's parse-then-`create_ack` at well over
ten times the cost (see docs/benchmarks.md). The rules are few and all here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from .encoding import Encoding
from .escape import escape
from .header import Header

# HL7 table 0008 acknowledgement codes.
ORIGINAL_CODES = frozenset({"AA", "AE", "AR"})
COMMIT_CODES = frozenset({"CA", "CE", "CR"})

# HL7 table 0357 message error condition codes (v2.5.1).
ERROR_TEXT = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


@dataclass(frozen=True, slots=True)
class AckError:
    """One ERR segment: what went wrong (table 0357), where, and a sentence for a human."""

    code: int
    text: str
    segment: str = "MSH"
    field: int | None = None
    component: int | None = None
    severity: str = "E"  # HL7 table 0516: E error, W warning, I information

    @classmethod
    def at(cls, code: int, text: str, location: str) -> AckError:
        """From a location written like 'MSH-10' or 'PID-3.1'."""
        seg, _, rest = location.partition("-")
        fld, _, comp = rest.partition(".")
        return cls(
            code=code,
            text=text,
            segment=seg or "MSH",
            field=int(fld) if fld.isdigit() else None,
            component=int(comp) if comp.isdigit() else None,
        )


def _version_at_least(version: str, major: int, minor: int) -> bool:
    try:
        parts = [int(p) for p in version.split(".")[:2]]
    except ValueError:
        return True
    while len(parts) < 2:
        parts.append(0)
    return (parts[0], parts[1]) >= (major, minor)


def _err_segment(err: AckError, enc: Encoding, version: str) -> str:
    f, c, s = enc.field, enc.component, enc.subcomponent
    code_text = ERROR_TEXT.get(err.code, "Application error")
    text = escape(err.text, enc)
    location_parts = [err.segment, "1", str(err.field or "")]
    if err.component:
        location_parts += ["1", str(err.component)]
    location = c.join(location_parts).rstrip(c)
    if _version_at_least(version or "2.5", 2, 5):
        # v2.5+: ERR-2 location (ERL), ERR-3 HL7 error code (CWE, table 0357), ERR-4
        # severity, ERR-8 user message.
        fields = [
            "",  # ERR-1 is retained for backward compatibility only
            location,
            f"{err.code}{c}{escape(code_text, enc)}{c}HL70357",
            err.severity,
            "",
            "",
            "",
            text,
        ]
        return "ERR" + f + f.join(fields)
    # v2.4 and earlier: ERR-1 ELD = segment^sequence^field^code&text&table
    eld = c.join([err.segment, "1", str(err.field or ""), ""])
    return f"ERR{f}{eld}{err.code}{s}{escape(code_text, enc)}{s}HL70357{s}{s}{s}{text}"


def ack_timestamp(now: datetime | None = None) -> str:
    """MSH-7 of an ACK (HL7 v2.5.1 DTM, to the second, with the UTC offset)."""
    global _last_stamp
    if now is not None:
        return now.strftime("%Y%m%d%H%M%S%z")
    second = int(time.time())
    if _last_stamp[0] != second:
        # strftime is ~4 µs, a tenth of the whole ACK: one per second is enough.
        _last_stamp = (second, datetime.fromtimestamp(second, UTC).strftime("%Y%m%d%H%M%S%z"))
    return _last_stamp[1]


_last_stamp: tuple[int, str] = (-1, "")


def build_ack(
    header: Header,
    code: str,
    *,
    control_id: str,
    errors: list[AckError] | tuple[AckError, ...] = (),
    text: str = "",
    application: str = "PARCOURS",
    facility: str = "",
    timestamp: str | None = None,
) -> str:
    """One ACK for `header`, segments separated by CR (no MLLP framing).

    - MSH-3/4 name us (the receiving application/facility of the incoming message when it
      named us, else `application`/`facility`); MSH-5/6 echo the incoming MSH-3/4.
    - Same encoding characters, version (MSH-12) and character set (MSH-18) as received.
    - MSH-9 = ACK^<incoming trigger>^ACK (§2.14.1); MSA-2 = incoming MSH-10.
    """
    if code not in ORIGINAL_CODES and code not in COMMIT_CODES:
        raise ValueError(f"unknown acknowledgement code {code!r} (HL7 table 0008)")
    enc = header.encoding
    f, c = enc.field, enc.component
    trigger = header.trigger_event
    msg_type = f"ACK{c}{trigger}{c}ACK" if trigger else "ACK"
    msh = [
        "MSH",
        enc.msh2,
        header.receiving_application or application,
        header.receiving_facility or facility,
        header.sending_application,
        header.sending_facility,
        timestamp or ack_timestamp(),
        "",
        msg_type,
        control_id,
        header.processing_id or "P",
        header.version_raw or "2.5",
    ]
    if header.charset:
        msh += ["", "", "", "", "", header.charset]
    msa_text = escape(text, enc) if text else ""
    if not msa_text and errors:
        msa_text = escape(errors[0].text, enc)
    msa = f"MSA{f}{code}{f}{header.control_id}"
    if msa_text:
        msa += f"{f}{msa_text[:80]}"  # MSA-3 is 80 characters (deprecated in 2.5.1, still read)
    segments = [f.join(msh), msa]
    version = header.version or "2.5"
    segments += [_err_segment(e, enc, version) for e in errors]
    return "\r".join(segments)


def build_ack_bytes(header: Header, code: str, *, charset: str = "ascii", **kw: object) -> bytes:
    """The ACK as bytes: what it echoes goes back byte for byte, what we write is encoded in
    the message's character set.

    `read_header` reads MSH as latin-1, so every header field (and MSH-1/MSH-2) is a byte-for-
    byte view of what arrived; encoding those again in UTF-8 turned a `\\xa1` field separator
    into `\\xc2\\xa1`, an ACK the sender cannot parse. The sender matches the ACK on the
    separators and MSH-10 it sent (HL7 v2.5.1 §2.9, §2.14.9.1-2), so the whole ACK is
    assembled in that byte view and only our own texts (ERR and MSA texts, our names) are
    encoded first.
    """
    try:
        "".encode(charset)
    except LookupError:
        charset = "utf-8"

    def ours(value: str) -> str:
        return value.encode(charset, errors="replace").decode("latin-1")

    errors = kw.pop("errors", ()) or ()
    kw["errors"] = [replace(e, text=ours(e.text)) for e in errors]  # type: ignore[attr-defined]
    for name in ("text", "application", "facility"):
        value = kw.get(name)
        if isinstance(value, str):
            kw[name] = ours(value)
    return build_ack(header, code, **kw).encode("latin-1")  # type: ignore[arg-type]


def read_ack(payload: bytes | str) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control id, MSA-3 text) of an ACK, for senders and tests."""
    text = payload.decode("latin-1") if isinstance(payload, bytes) else payload
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    if not text.startswith("MSH") or len(text) < 8:
        raise ValueError("not an HL7 message")
    f = text[3]
    for seg in text.split("\r"):
        if seg.startswith("MSA" + f):
            parts = seg.split(f)
            parts += [""] * (4 - len(parts))
            return parts[1], parts[2], parts[3]
    raise ValueError("ACK has no MSA segment")
