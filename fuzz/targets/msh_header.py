"""MSH header reader (`transformers.hl7.header`): what intake reads before the ACK.

A bug is any exception other than `HeaderError` (no MSH, bad MSH-2) and `UnsupportedCharset`
(MSH-18 not in table 0211), or a header field that crosses a segment boundary.
"""

from __future__ import annotations

from fuzz import seeds
from fuzz.harness import Harness, check
from transformers.hl7.charset import UnsupportedCharset
from transformers.hl7.header import HeaderError, patient_key, read_header, resolve_charset


def target(data: bytes) -> None:
    header = read_header(data)
    for value in (header.sending_application, header.control_id, header.version_raw,
                  header.charset, header.message_code):
        check("\r" not in value and "\n" not in value, "an MSH field spans two segments")
    enc = header.encoding
    check(len({enc.field, enc.component, enc.repetition, enc.escape, enc.subcomponent}) == 5,
          "encoding characters are not distinct")
    codec = resolve_charset(header, None)
    text = data.decode(codec, "replace")
    key = patient_key(text, enc, codec)
    check(key is None or isinstance(key, str), "patient key is not text")


HARNESS = Harness("msh_header", target, (HeaderError, UnsupportedCharset), seeds.hl7_messages)
