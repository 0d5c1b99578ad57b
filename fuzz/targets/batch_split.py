"""FHS/BHS batch splitting (`transformers.hl7.batch`, HL7 v2.5.1 §2.10.3).

A bug is any exception (splitting refuses nothing: junk is reported, not raised), or:
- a message that does not start with MSH, or that holds a line break other than CR;
- an envelope segment (FHS/BHS/BTS/FTS) kept inside a message;
- more messages than there are MSH segments at the start of a line.
"""

from __future__ import annotations

from fuzz import seeds
from fuzz.harness import Harness, check
from transformers.hl7.batch import split_messages


def target(data: bytes) -> None:
    batch = split_messages(data)
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a UTF-8 BOM is dropped
    lines = body.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    starts = sum(1 for line in lines if line.strip().startswith(b"MSH"))
    check(len(batch.messages) <= starts, "more messages than MSH segments")
    for message in batch.messages:
        check(message.startswith(b"MSH"), "a message does not start with MSH")
        check(b"\n" not in message, "a message keeps an LF")
        for segment in message.split(b"\r"):
            check(segment.strip()[:3] not in (b"FHS", b"BHS", b"BTS", b"FTS"),
                  "an envelope segment inside a message")
    for segment in batch.envelope:
        check(segment[:3] in (b"FHS", b"BHS", b"BTS", b"FTS"), "a non-envelope in the envelope")
    check(batch.is_batch == bool(batch.envelope), "is_batch disagrees with the envelope")


def _seeds() -> list[bytes]:
    messages = seeds.hl7_messages(16 * 1024)
    batch = b"FHS|^~\\&|LAB\rBHS|^~\\&|LAB\r" + b"".join(messages[:3]) + b"BTS|3\rFTS|1\r"
    return [batch, *messages]


HARNESS = Harness("batch_split", target, (), _seeds)
