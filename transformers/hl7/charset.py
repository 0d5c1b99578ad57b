"""MSH-18 character sets (HL7 table 0211) mapped to Python codecs.

Only the sets a French regional platform meets are accepted. An unknown name is an explicit
refusal (AR with ERR), never a silent guess: a wrong guess corrupts names and addresses.
"""

from __future__ import annotations

_TABLE_0211: dict[str, str] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",  # not in table 0211 but sent by many systems
    "UNICODE": "utf-8",  # deprecated in v2.5.1; in practice UTF-8 on the wire
}


class UnsupportedCharset(ValueError):
    """MSH-18 (or a channel setting) names a character set Parcours does not decode."""


def codec_for(name: str) -> str:
    """Return the Python codec for an MSH-18 value (first repetition, case-insensitive)."""
    key = " ".join(name.strip().upper().split())
    try:
        return _TABLE_0211[key]
    except KeyError:
        raise UnsupportedCharset(f"unsupported character set {name!r} (HL7 table 0211)") from None


def supported_charsets() -> list[str]:
    return sorted(_TABLE_0211)
