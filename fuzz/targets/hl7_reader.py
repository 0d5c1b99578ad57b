"""The lazy HL7 reader with escapes and charsets (`transformers.hl7.reader`, `.escape`).

Input: the last byte picks a character set of table 0211, the rest is the message in it. Every
segment, field, repetition, component and subcomponent is read through the accessors. A bug
is any exception other than `HL7ReadError` (not an HL7 message), or:
- `escape` then `unescape` not giving the value back (a value without line breaks: the ACK
  builder relies on this to echo texts);
- `get` and `components` disagreeing on the same component.
"""

from __future__ import annotations

from fuzz import seeds
from fuzz.harness import Harness, check
from transformers.hl7.charset import codec_for, supported_charsets
from transformers.hl7.escape import escape, unescape
from transformers.hl7.reader import HL7ReadError, Message, parse_path

_CHARSETS = [codec_for(name) for name in supported_charsets()]
_PATHS = ("MSH-9.1", "PID-3", "PID-3[2].4.2", "PID-5.1", "OBX[2]-5", "OBX-3.1.1", "OBR-4.2",
          "MSH-18", "ZBE-1[*]")
# One input's work stays bounded (the fuzzer's speed is its reach): the first segments,
# fields, repetitions and components are enough to reach every branch of the accessors.
_MAX_SEGMENTS = 8
_MAX_FIELDS = 15


def _round_trip(value: str, msg: Message) -> None:
    if "\r" in value or "\n" in value:
        return
    check(unescape(escape(value, msg.encoding), msg.encoding, msg.charset) == value,
          "unescape(escape(v)) != v")


def target(data: bytes) -> None:
    if not data:
        return
    codec = _CHARSETS[data[-1] % len(_CHARSETS)]
    msg = Message.parse(data[:-1].decode(codec, "replace"), codec)
    for seg in msg.segments[:_MAX_SEGMENTS]:
        for n in range(1, min(len(seg), _MAX_FIELDS) + 1):
            reps = seg.repetitions(n)
            for r in range(1, min(len(reps), 2) + 1):
                comps = seg.components(n, r)
                for c, decoded in enumerate(comps[:3], start=1):
                    check(seg.get(n, r, c) == decoded, "get and components disagree")
                    seg.get(n, r, c, 2)
                    seg.is_null(n, r, c)
                    _round_trip(decoded, msg)
                _round_trip(seg.get(n, r), msg)
    for path in _PATHS:
        parse_path(path)
        msg.get(path)
        msg.get_all(path)


HARNESS = Harness("hl7_reader", target, (HL7ReadError,), seeds.hl7_messages, max_len=512)
