"""What intake needs from a message: its MSH, its character set and a patient key.

This is the whole of the work done before an ACK. Everything else waits for the router.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .charset import UnsupportedCharset, codec_for
from .encoding import DEFAULT_ENCODING, Encoding
from .escape import unescape
from .reader import HL7ReadError, encoding_from_msh, normalise_separators

# ANS: INS OIDs (NIR 1.2.250.1.213.1.4.8, NIA .9, test NIR .10, demo .11) — CI-SIS
# "Identifiant national de santé" in HL7 v2 PID-3 (CX-5 = INS).
INS_OIDS = frozenset(
    {"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"}
)


@dataclass(frozen=True, slots=True)
class Header:
    """MSH fields, raw (escaped) as received, so an ACK can echo them byte for byte."""

    encoding: Encoding = DEFAULT_ENCODING
    sending_application: str = ""  # MSH-3
    sending_facility: str = ""  # MSH-4
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    timestamp: str = ""  # MSH-7
    message_type: str = ""  # MSH-9.1
    trigger_event: str = ""  # MSH-9.2
    structure: str = ""  # MSH-9.3
    control_id: str = ""  # MSH-10
    processing_id: str = ""  # MSH-11.1
    version: str = ""  # MSH-12.1 (e.g. "2.5" of "2.5^FRA^2.11")
    version_raw: str = ""  # MSH-12 whole, echoed in the ACK
    accept_ack_type: str = ""  # MSH-15
    application_ack_type: str = ""  # MSH-16
    charset: str = ""  # MSH-18, first repetition
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def message_code(self) -> str:
        """'ORU^R01' style, the form operators write in routes."""
        if self.trigger_event:
            return f"{self.message_type}^{self.trigger_event}"
        return self.message_type

    @property
    def enhanced_mode(self) -> bool:
        """HL7 v2.5.1 §2.9.3: enhanced acknowledgement when MSH-15 or MSH-16 is valued."""
        return bool(self.accept_ack_type or self.application_ack_type)


class HeaderError(ValueError):
    """MSH could not be read; `partial` holds whatever could be, to build an AR from it."""

    def __init__(self, message: str, partial: Header, hl7_code: int, location: str) -> None:
        super().__init__(message)
        self.partial = partial
        self.hl7_code = hl7_code  # HL7 table 0357
        self.location = location  # e.g. "MSH-2"


def _first_segment(data: bytes) -> bytes:
    start = 0
    while start < len(data) and data[start] in b"\r\n \t":
        start += 1
    if data[start : start + 3] == b"\xef\xbb\xbf":  # UTF-8 BOM before MSH
        start += 3
    ends = [i for i in (data.find(b"\r", start), data.find(b"\n", start)) if i >= 0]
    end = min(ends) if ends else len(data)
    return data[start:end]


def header_from_msh(msh: str, enc: Encoding) -> Header:
    parts = msh.split(enc.field)
    # parts[0]="MSH", parts[1]=MSH-2, parts[k]=MSH-(k+1)
    f = [parts[0], enc.field, *parts[1:]]

    def get(n: int) -> str:
        return f[n] if n < len(f) else ""

    def comp(n: int, c: int) -> str:
        v = get(n).split(enc.repetition)[0]
        comps = v.split(enc.component)
        return comps[c - 1] if c <= len(comps) else ""

    return Header(
        encoding=enc,
        sending_application=get(3),
        sending_facility=get(4),
        receiving_application=get(5),
        receiving_facility=get(6),
        timestamp=get(7),
        message_type=comp(9, 1).strip(),
        trigger_event=comp(9, 2).strip(),
        structure=comp(9, 3).strip(),
        control_id=get(10).strip(),
        processing_id=comp(11, 1).strip(),
        version=comp(12, 1).strip(),
        version_raw=get(12),
        accept_ack_type=get(15).strip().upper(),
        application_ack_type=get(16).strip().upper(),
        charset=get(18).split(enc.repetition)[0].strip(),
    )


def read_header(data: bytes) -> Header:
    """Read MSH from raw bytes, before the message is decoded.

    MSH is ASCII in practice (HL7 v2.5.1 §2.15.9.18: MSH-18 itself is in the default
    character set), so latin-1 reads it byte for byte whatever the body's character set is.
    """
    line = _first_segment(data).decode("latin-1")
    if not line.startswith("MSH"):
        raise HeaderError(
            "message does not start with an MSH segment", Header(), 100, "MSH"
        )
    try:
        enc = encoding_from_msh(line)
    except HL7ReadError as exc:
        raise HeaderError(str(exc), Header(), 102, "MSH-2") from None
    return header_from_msh(line, enc)


def resolve_charset(
    header: Header, channel_charset: str | None, default: str = "UNICODE UTF-8"
) -> str:
    """Channel setting first (a feed known to lie in MSH-18), then MSH-18, then the default."""
    if channel_charset:
        return codec_for(channel_charset)
    if header.charset:
        return codec_for(header.charset)
    return codec_for(default)


def patient_key(text: str, enc: Encoding, charset: str = "utf-8") -> str | None:
    """A stable key for per-patient ordering, from the first PID-3 (HL7 v2.5.1 §3.4.2.3).

    The local identifier (CX-5 = PI, or the first repetition) qualified by its assigning
    authority is preferred over the INS: a facility's feed always carries its own id, while
    the INS may be absent from one message and present in the next (identity still PROV),
    which would split one patient's events across two keys. Returns None without PID.
    """
    text = normalise_separators(text)
    start = text.find("\rPID" + enc.field)
    if start < 0:
        return None
    end = text.find("\r", start + 1)
    seg = text[start + 1 : end if end >= 0 else len(text)]
    fields = seg.split(enc.field)
    if len(fields) < 4 or not fields[3]:
        return None
    local_pi: tuple[str, str] | None = None
    local_any: tuple[str, str] | None = None
    ins: tuple[str, str] | None = None
    for rep in fields[3].split(enc.repetition):
        comps = rep.split(enc.component)
        ident = comps[0]
        if not ident:
            continue
        authority = comps[3] if len(comps) > 3 else ""
        id_type = comps[4] if len(comps) > 4 else ""
        if id_type == "INS" or any(a in INS_OIDS for a in authority.split(enc.subcomponent)):
            ins = ins or ("INS", ident)
        elif id_type == "PI":
            local_pi = local_pi or (authority, ident)
        else:
            local_any = local_any or (authority, ident)
    authority, ident = local_pi or local_any or ins or ("", "")
    if not ident:
        return None
    return unescape(f"{authority}|{ident}", enc, charset)


__all__ = [
    "Header",
    "HeaderError",
    "INS_OIDS",
    "UnsupportedCharset",
    "header_from_msh",
    "patient_key",
    "read_header",
    "resolve_charset",
]
