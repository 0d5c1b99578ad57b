"""A lazy HL7 v2 reader.

Intake must answer in well under a millisecond, so nothing is split until someone asks:
a `Message` keeps the text, splits segments on first use, and a `Segment` splits its fields
on first use. Components, repetitions and subcomponents are split only for the value asked
for, and escape sequences are decoded only on the leaf that is returned.

Paths follow the usual notation: ``PID-3``, ``PID-3.1``, ``PID-3[2].4.2``, ``OBX[3]-5``
(segment occurrence in brackets after the name, repetition in brackets after the field,
all 1-based; HL7 v2.5.1 §2.5 for the structure of segments, fields and components).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from .encoding import DEFAULT_ENCODING, Encoding
from .escape import unescape

# HL7 v2.5.1 §2.5.3: a field (component, subcomponent) sent as two double quotes is an
# explicit null — "delete the value held" — unlike an empty one, which means "not sent, keep
# what you have". The decoded accessors return '' for it (the two characters are never a
# value); `Segment.is_null` tells the two apart for readers that must delete.
NULL = '""'


class HL7ReadError(ValueError):
    """The text is not an HL7 v2 message this reader can make sense of."""


def normalise_separators(text: str) -> str:
    """Segment terminator is CR (HL7 v2.5.1 §2.5.1); tolerate LF and CRLF from files and peers."""
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return text


def encoding_from_msh(msh: str) -> Encoding:
    """Read MSH-1 and MSH-2. Raises HL7ReadError when they cannot be what HL7 says they are."""
    if not msh.startswith("MSH") or len(msh) < 8:
        raise HL7ReadError("message does not start with an MSH segment")
    field = msh[3]
    end = msh.find(field, 4)
    chars = msh[4:end] if end >= 0 else msh[4:]
    delimiters = field + chars[:5]
    # HL7 v2.5.1 §2.5.4 / v2.7 §2.5.5.2: MSH-1 and the four (five with truncation) MSH-2
    # characters are distinct. They must not be letters or digits either: escape sequences
    # (§2.7: \F\ \S\ \T\ \X41\ …) and segment names are made of those, so an escape
    # character "T" could not be told from the sequence that names the subcomponent one.
    if (len(chars) < 4 or len(set(delimiters)) != len(delimiters)
            or any(c.isalnum() for c in delimiters)):
        raise HL7ReadError("MSH-2 encoding characters are missing or malformed")
    return Encoding(
        field=field,
        component=chars[0],
        repetition=chars[1],
        escape=chars[2],
        subcomponent=chars[3],
        truncation=chars[4] if len(chars) > 4 else "",
    )


_PATH = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<occ>\d+)\])?"
    r"(?:-(?P<field>\d+)(?:\[(?P<rep>\d+|\*)\])?(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?)?$"
)


@dataclass(frozen=True, slots=True)
class Path:
    segment: str
    occurrence: int | None  # None: every occurrence (get_all) or the first (get)
    field: int | None
    repetition: int | None  # None: first for get, all for get_all
    component: int | None
    subcomponent: int | None


@lru_cache(maxsize=4096)
def parse_path(path: str) -> Path:
    m = _PATH.match(path.strip().upper())
    if not m:
        raise ValueError(
            f"invalid HL7 path {path!r}: expected e.g. PID-3, PID-3.1, PID-3[2].4.2, OBX[2]-5"
        )
    rep = m["rep"]
    return Path(
        segment=m["seg"],
        occurrence=int(m["occ"]) if m["occ"] else None,
        field=int(m["field"]) if m["field"] else None,
        repetition=None if rep in (None, "*") else int(rep),
        component=int(m["comp"]) if m["comp"] else None,
        subcomponent=int(m["sub"]) if m["sub"] else None,
    )


class Segment:
    """One segment; fields are split on first access."""

    __slots__ = ("raw", "name", "_enc", "_fields", "_charset")

    def __init__(self, raw: str, enc: Encoding, charset: str = "utf-8") -> None:
        self.raw = raw
        self.name = raw[:3]
        self._enc = enc
        self._charset = charset
        self._fields: list[str] | None = None

    @property
    def fields(self) -> list[str]:
        """Raw fields indexed by HL7 sequence number (index 0 is the segment name).

        For MSH, index 1 is the field separator itself and index 2 the encoding characters,
        so MSH-n is ``fields[n]`` like every other segment (HL7 v2.5.1 §2.14.9).
        """
        if self._fields is None:
            parts = self.raw.split(self._enc.field)
            if self.name == "MSH" or self.name in ("FHS", "BHS"):
                parts = [parts[0], self._enc.field, *parts[1:]]
            self._fields = parts
        return self._fields

    def field(self, n: int) -> str:
        """Raw (still escaped) value of field n, '' when absent."""
        f = self.fields
        return f[n] if n < len(f) else ""

    def __len__(self) -> int:
        return len(self.fields) - 1

    def repetitions(self, n: int) -> list[str]:
        raw = self.field(n)
        if self.name == "MSH" and n in (1, 2):
            return [raw]
        return raw.split(self._enc.repetition) if raw else []

    def get(
        self,
        n: int,
        repetition: int = 1,
        component: int | None = None,
        subcomponent: int | None = None,
    ) -> str:
        """Decoded value of one field/repetition/component/subcomponent, '' when absent or
        an explicit null (`is_null` says which)."""
        raw = self._pick(n, repetition, component, subcomponent)
        if self.name == "MSH" and n in (1, 2):
            return raw  # the delimiters themselves: nothing in them is an escape (§2.14.9.2)
        return unescape(raw, self._enc, self._charset) if raw and raw != NULL else ""

    def is_null(
        self,
        n: int,
        repetition: int = 1,
        component: int | None = None,
        subcomponent: int | None = None,
    ) -> bool:
        """True when the value is HL7's explicit null `""` (delete), not merely absent."""
        if self.name == "MSH" and n in (1, 2):
            return False
        return self._pick(n, repetition, component, subcomponent) == NULL

    def get_raw(
        self,
        n: int,
        repetition: int = 1,
        component: int | None = None,
        subcomponent: int | None = None,
    ) -> str:
        return self._pick(n, repetition, component, subcomponent)

    def _pick(self, n: int, repetition: int, component: int | None, sub: int | None) -> str:
        raw = self.field(n)
        if not raw:
            return ""
        if self.name == "MSH" and n in (1, 2):
            return raw
        enc = self._enc
        if enc.repetition in raw:
            reps = raw.split(enc.repetition)
            raw = reps[repetition - 1] if repetition <= len(reps) else ""
        elif repetition != 1:
            return ""
        if component is None:
            return raw
        comps = raw.split(enc.component)
        raw = comps[component - 1] if component <= len(comps) else ""
        if sub is None:
            return raw
        subs = raw.split(enc.subcomponent)
        return subs[sub - 1] if sub <= len(subs) else ""

    def leading(self, n: int) -> list[str]:
        """The decoded first subcomponent of each component of the first repetition of field
        n — `get(n, 1, c, 1)` for every c at once (`[]` when the field is empty), for readers
        that take several components of one field (the OBX read for normalisation)."""
        raw = self.field(n)
        if not raw:
            return []
        if self.name == "MSH" and n in (1, 2):
            return [raw]
        enc = self._enc
        if enc.repetition in raw:
            raw = raw.split(enc.repetition, 1)[0]
        out = []
        for comp in raw.split(enc.component):
            if enc.subcomponent in comp:
                comp = comp.split(enc.subcomponent, 1)[0]
            out.append(unescape(comp, enc, self._charset) if comp and comp != NULL else "")
        return out

    def components(self, n: int, repetition: int = 1) -> list[str]:
        """Decoded components of one repetition (an explicit null component is '')."""
        raw = self._pick(n, repetition, None, None)
        if not raw or raw == NULL:
            return []
        if self.name == "MSH" and n in (1, 2):
            return [raw]  # the delimiters themselves, not components (§2.14.9.1-2)
        return [unescape(c, self._enc, self._charset) if c != NULL else ""
                for c in raw.split(self._enc.component)]

    def __repr__(self) -> str:  # no content: segments carry patient data
        return f"<Segment {self.name} fields={len(self)}>"


class Message:
    """A message read on demand. Build with `Message.parse`."""

    __slots__ = ("text", "encoding", "charset", "_segments")

    def __init__(self, text: str, encoding: Encoding, charset: str = "utf-8") -> None:
        self.text = text
        self.encoding = encoding
        self.charset = charset
        self._segments: list[Segment] | None = None

    @classmethod
    def parse(cls, text: str, charset: str = "utf-8") -> Message:
        """Wrap decoded text. Only MSH-1/MSH-2 are read now; the rest waits for a question."""
        text = normalise_separators(text).lstrip("\r \t\ufeff")
        end = text.find("\r")
        msh = text if end < 0 else text[:end]
        return cls(text, encoding_from_msh(msh), charset)

    @property
    def segments(self) -> list[Segment]:
        if self._segments is None:
            enc, cs = self.encoding, self.charset
            self._segments = [Segment(s, enc, cs) for s in self.text.split("\r") if s.strip()]
        return self._segments

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        seen = 0
        for seg in self.segments:
            if seg.name == name:
                seen += 1
                if seen == occurrence:
                    return seg
        return None

    def segments_named(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def get(self, path: str) -> str:
        """First decoded value at `path`, '' when absent."""
        p = parse_path(path)
        seg = self.segment(p.segment, p.occurrence or 1)
        if seg is None:
            return ""
        if p.field is None:
            return seg.raw
        return seg.get(p.field, p.repetition or 1, p.component, p.subcomponent)

    def get_all(self, path: str) -> list[str]:
        """Every non-empty decoded value at `path`, over segment occurrences and repetitions."""
        p = parse_path(path)
        segs = (
            [s for s in [self.segment(p.segment, p.occurrence)] if s is not None]
            if p.occurrence
            else self.segments_named(p.segment)
        )
        out: list[str] = []
        for seg in segs:
            if p.field is None:
                out.append(seg.raw)
                continue
            reps = [p.repetition] if p.repetition else range(1, len(seg.repetitions(p.field)) + 1)
            for r in reps:
                v = seg.get(p.field, r, p.component, p.subcomponent)
                if v:
                    out.append(v)
        return out

    def __repr__(self) -> str:
        return f"<Message segments={len(self.segments)}>"


def parse_message(text: str, charset: str = "utf-8") -> Message:
    return Message.parse(text, charset)


__all__ = [
    "DEFAULT_ENCODING",
    "HL7ReadError",
    "Message",
    "NULL",
    "Path",
    "Segment",
    "encoding_from_msh",
    "normalise_separators",
    "parse_message",
    "parse_path",
]
