"""A small, self-contained ER7 reader for ORU^R01 observations.

Only what normalisation needs: MSH-4 (the sender) and the OBX segments. The shared lazy reader
(``transformers/hl7/reader.py``) replaces it in the engine; this one keeps the transformer
testable on its own. Separators come from MSH-1/MSH-2 (HL7 v2.5.1 §2.5.4) and escape
sequences are resolved per §2.7.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers.lab.observation import RawObservation

_SEGMENT_SPLIT = re.compile(r"\r\n|\n|\r")


class Er7Error(ValueError):
    """The text is not an HL7 v2 message we can read."""


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    def unescape(self, text: str) -> str:
        """Resolve \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\Xhh..\\ and \\.br\\ (§2.7.1-2.7.4)."""
        esc = self.escape
        if not esc or esc not in text:
            return text
        out: list[str] = []
        i = 0
        while i < len(text):
            ch = text[i]
            end = text.find(esc, i + 1) if ch == esc else -1
            if ch != esc or end < 0:
                out.append(ch)
                i += 1
                continue
            token = text[i + 1 : end]
            simple = {
                "F": self.field,
                "S": self.component,
                "T": self.subcomponent,
                "R": self.repetition,
                "E": esc,
                ".br": "\n",
            }  # HL7 v2.5.1 §2.7.1, table of escape sequences
            if token in simple:
                out.append(simple[token])
            elif token.startswith("X") and len(token) > 1:
                try:
                    out.append(bytes.fromhex(token[1:]).decode("utf-8", errors="replace"))
                except ValueError:
                    out.append(text[i : end + 1])
            # \H\ \N\ (highlighting), \Cxxyy\ \Mxxyyzz\ (charsets), \Zxx\: formatting, dropped.
            i = end + 1
        return "".join(out)


def _delimiters(msh: str) -> Delimiters:
    if not msh.startswith("MSH") or len(msh) < 8:
        raise Er7Error("message does not start with an MSH segment")
    field = msh[3]
    encoding = msh[4:].split(field, 1)[0]
    if len(encoding) < 4:
        raise Er7Error("MSH-2 must hold at least four encoding characters")
    return Delimiters(field, encoding[0], encoding[1], encoding[2], encoding[3])


def _components(field: str, d: Delimiters) -> list[str]:
    """Components of a field (first subcomponent each), unescaped."""
    out = []
    for part in field.split(d.component):
        if d.subcomponent in part:
            part = part.split(d.subcomponent, 1)[0]
        out.append(d.unescape(part) if d.escape in part else part)
    return out


def _at(items: list[str], index: int) -> str:
    return items[index] if index < len(items) else ""


def observations_from_oru(text: str) -> tuple[str, list[RawObservation]]:
    """Return (sender = MSH-4.1, observations) from an ER7 ORU message."""
    segments = [s for s in _SEGMENT_SPLIT.split(text.strip("\x0b\x1c\r\n")) if s]
    if not segments:
        raise Er7Error("empty message")
    d = _delimiters(segments[0])
    msh = segments[0].split(d.field)
    # MSH-1 is the field separator itself, so MSH-n sits at index n-1 (§2.5.4).
    sender = _at(_components(_at(msh, 3), d), 0)
    observations: list[RawObservation] = []
    prefix = "OBX" + d.field
    for segment in segments[1:]:
        if not segment.startswith(prefix):
            continue
        f = segment.split(d.field)
        if len(f) < 24:
            f += [""] * (24 - len(f))
        code = _components(f[3], d) + ["", "", "", "", "", ""]
        value_field = f[5]
        if d.repetition in value_field:
            value_field = value_field.split(d.repetition, 1)[0]
        value = d.unescape(value_field) if d.escape in value_field else value_field
        units = _components(f[6], d) if f[6] else [""]
        flags = f[8]
        if d.repetition in flags:
            flags = flags.split(d.repetition, 1)[0]
        reference = f[7]
        observations.append(
            RawObservation(
                set_id=f[1],
                value_type=f[2],
                code=code[0],
                text=code[1],
                coding_system=code[2],
                alt_code=code[3],
                alt_text=code[4],
                alt_coding_system=code[5],
                value=value,
                units=_at(units, 0) or _at(units, 1),
                reference_range=d.unescape(reference) if d.escape in reference else reference,
                abnormal_flags=_at(_components(flags, d), 0) if flags else "",
                result_status=f[11],
                observed_at=_components(f[14], d)[0] if f[14] else "",
                performing_lab=(_components(f[23], d)[0] if f[23] else "")
                or (_components(f[15], d)[0] if f[15] else ""),
            )
        )
    return sender, observations
