"""HL7 v2 escape sequences (HL7 v2.5.1 §2.7 "Use of escape sequences in text fields").

Decoding happens only when a caller reads a leaf value, never at intake: most fields are
never looked at, so paying for them would be waste.
"""

from __future__ import annotations

from .encoding import Encoding

# §2.7.4 formatting commands: .br is a line break; .sp/.in/.ti/.sk/.ce/.fi/.nf are layout
# hints that have no meaning once the text leaves the sending system's printer.
_FORMATTING = {".br": "\n", ".sp": "\n", ".fi": "", ".nf": "", ".ce": ""}


def unescape(value: str, enc: Encoding, charset: str = "utf-8") -> str:
    """Replace escape sequences by the characters they stand for.

    Unknown sequences (\\Zxx\\ locally defined, \\Cxxyy\\/\\Mxxyyzz\\ character set switches)
    are kept verbatim: dropping them would lose information an operator may need.
    """
    esc = enc.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        j = value.find(esc, i)
        if j < 0:
            out.append(value[i:])
            break
        out.append(value[i:j])
        k = value.find(esc, j + 1)
        if k < 0:  # lone escape character: keep as data (§2.7: malformed, be lenient)
            out.append(value[j:])
            break
        seq = value[j + 1 : k]
        out.append(_decode_sequence(seq, enc, charset, value[j : k + 1]))
        i = k + 1
    return "".join(out)


def _decode_sequence(seq: str, enc: Encoding, charset: str, verbatim: str) -> str:
    if seq == "F":
        return enc.field
    if seq == "S":
        return enc.component
    if seq == "T":
        return enc.subcomponent
    if seq == "R":
        return enc.repetition
    if seq == "E":
        return enc.escape
    if seq == "P" and enc.truncation:  # v2.7 truncation character
        return enc.truncation
    if seq in ("H", "N"):  # highlighting on/off (§2.7.3): no meaning in plain text
        return ""
    if seq[:1] == "X" and len(seq) > 1:
        try:
            raw = bytes.fromhex(seq[1:])
        except ValueError:
            return verbatim
        for codec in (charset, "latin-1"):
            try:
                return raw.decode(codec)
            except (UnicodeDecodeError, LookupError):
                continue
        return verbatim
    if seq in _FORMATTING:
        return _FORMATTING[seq]
    if seq[:3] in (".in", ".ti", ".sk"):
        return ""
    return verbatim


def escape(value: str, enc: Encoding) -> str:
    """Escape delimiters in a text value so it can be placed in a field (used for ACK text)."""
    e = enc.escape
    out = value.replace(e, f"{e}E{e}")
    out = out.replace(enc.field, f"{e}F{e}")
    out = out.replace(enc.component, f"{e}S{e}")
    out = out.replace(enc.subcomponent, f"{e}T{e}")
    out = out.replace(enc.repetition, f"{e}R{e}")
    if enc.truncation:
        out = out.replace(enc.truncation, f"{e}P{e}")
    return out.replace("\r", f"{e}.br{e}").replace("\n", f"{e}.br{e}")
