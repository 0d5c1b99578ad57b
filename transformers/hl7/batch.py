"""Splitting a file or a frame into messages, including HL7 batches.

HL7 v2.5.1 §2.10.3: a batch is FHS/BHS … messages … BTS/FTS; each message starts at MSH.
Files in the field also hold plain concatenated messages separated by blank lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_ENVELOPE = ("FHS", "BHS", "BTS", "FTS")


@dataclass
class Batch:
    """The messages of a file, plus the envelope segments that wrapped them (if any)."""

    messages: list[bytes] = field(default_factory=list)
    envelope: list[bytes] = field(default_factory=list)
    leading_junk: bytes = b""  # bytes before the first MSH that were not envelope segments

    @property
    def is_batch(self) -> bool:
        return bool(self.envelope)


def split_messages(data: bytes) -> Batch:
    """Split raw bytes (any of CR, LF, CRLF) into raw messages, keeping each one's bytes."""
    batch = Batch()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    current: list[bytes] | None = None
    junk: list[bytes] = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        tag = stripped[:3].decode("latin-1")
        if tag in _ENVELOPE:
            batch.envelope.append(stripped)
            if current:
                batch.messages.append(b"\r".join(current) + b"\r")
                current = None
            continue
        if tag == "MSH":
            if current:
                batch.messages.append(b"\r".join(current) + b"\r")
            current = [stripped]
        elif current is not None:
            current.append(line.rstrip(b"\r\n"))
        else:
            junk.append(line)
    if current:
        batch.messages.append(b"\r".join(current) + b"\r")
    batch.leading_junk = b"\r".join(junk)
    return batch
