"""The ACK builder on arbitrary headers (`transformers.hl7.ack`).

The input is what an MLLP frame can carry (VT and FS removed: the decoder cuts there). Its
MSH is read as intake reads it — a broken MSH gives the partial header intake answers AR
from — then ACKs of every code are built, with ERR texts taken from the input. A bug is any
exception, or an ACK that:
- cannot be framed for MLLP (it carries VT or FS);
- does not read back as an ACK with the code sent and MSA-2 = the incoming MSH-10;
- has a different field separator or encoding characters than the message it answers.
"""

from __future__ import annotations

from connectors.mllp.framing import frame
from fuzz import seeds
from fuzz.harness import Harness, check
from transformers.hl7.ack import AckError, build_ack_bytes, read_ack
from transformers.hl7.charset import UnsupportedCharset, codec_for
from transformers.hl7.header import HeaderError, read_header

_CODES = ("AA", "AE", "AR", "CA", "CE", "CR")


def target(data: bytes) -> None:
    payload = data.replace(b"\x0b", b"").replace(b"\x1c", b"")
    try:
        header = read_header(payload)
    except HeaderError as exc:
        header = exc.partial
    try:
        charset = codec_for(header.charset) if header.charset else "utf-8"
    except UnsupportedCharset:
        charset = "utf-8"
    text = payload[-120:].decode(charset, "replace")
    code = _CODES[len(payload) % len(_CODES)]
    errors = [AckError.at(207, text, "PID-3.1"), AckError(101, text[:20], "MSH", 10)]
    ack = build_ack_bytes(header, code, charset=charset, control_id="ACK1", errors=errors,
                          text=text, timestamp="20240101000000+0000")
    frame(ack)
    got_code, got_control, _ = read_ack(ack)
    check(got_code == code, "ACK does not read back with its code")
    check(got_control == header.control_id, "MSA-2 is not the incoming MSH-10")
    check(ack[3:8].decode("latin-1") == header.encoding.field + header.encoding.msh2[:4],
          "ACK separators differ from the message's")


HARNESS = Harness("ack_builder", target, (), seeds.hl7_messages)
