"""Mutated MLLP traffic for the end-to-end fuzz: what a broken or hostile sender puts on the
wire, built from corpus messages.

Each case is the bytes written on one connection and how many answers they are owed. A
frame *owes an answer* when it is complete (start block … end block, as the engine's own
decoder cuts the stream) and its content starts with ``MSH`` and is not itself an ACK
(MSH-9.1 = ACK: answering an ACK would start an endless exchange, HL7 v2.5.1 §2.9.2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from connectors.mllp.framing import (
    CARRIAGE_RETURN,
    DEFAULT_MAX_FRAME_BYTES,
    END_BLOCK,
    START_BLOCK,
    Frame,
    FrameDecoder,
    Oversized,
)
from transformers.hl7.header import HeaderError, read_header

HUGE_FIELD_MAX = 512 * 1024
_BAD_CHARSETS = (b"KLINGON", b"UNICODE UTF-32", b"8859/99", b"\xff\xfe", b"ISO IR192")
_FRAMING = (START_BLOCK, END_BLOCK, CARRIAGE_RETURN, END_BLOCK + CARRIAGE_RETURN)


@dataclass(frozen=True)
class Case:
    kind: str
    wire: bytes
    owed: int


def owes_answer(payload: bytes) -> bool:
    """A complete frame's content starts with MSH, MSH-9.1 is not ACK, and the sender did
    not ask for no commit ACK: HL7 v2.5.1 §2.9.3 / table 0155, MSH-15 NE is never answered,
    ER and SU only on error or on success (so they are not owed here: an answer to them is
    accepted, not required). An MSH too broken to read is owed its AR."""
    if not payload.startswith(b"MSH"):
        return False
    try:
        header = read_header(payload)
    except HeaderError:
        return True
    if header.message_type == "ACK":
        return False
    return not header.enhanced_mode or header.accept_ack_type not in ("NE", "ER", "SU")


def owed_answers(wire: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> int:
    """How many answers `wire` is owed, cut by the same decoder the listener uses."""
    decoder = FrameDecoder(max_frame_bytes)
    events = decoder.feed(wire) + decoder.close()
    return sum(1 for e in events if isinstance(e, Frame) and owes_answer(e.payload)
               or isinstance(e, Oversized) and owes_answer(e.head))


def _payload(message: bytes) -> bytes:
    body = message.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return body.replace(START_BLOCK, b"").replace(END_BLOCK, b"")


class Mutator:
    """Seeded, so a failing run can be replayed with the same `--seed`."""

    def __init__(self, messages: list[bytes], seed: int,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.messages = [_payload(m) for m in messages if m.strip()]
        self.rng = random.Random(seed)
        self.max_frame_bytes = max_frame_bytes
        self.kinds = (self.bit_flips, self.truncation, self.splice, self.framing_bytes,
                      self.huge_field, self.bad_charset, self.resend, self.ack, self.clean)
        self._sent: list[bytes] = []

    def _pick(self) -> bytes:
        return self.rng.choice(self.messages)

    def case(self) -> Case:
        mutate = self.rng.choice(self.kinds)
        wire = mutate()
        return Case(mutate.__name__, wire, owed_answers(wire, self.max_frame_bytes))

    @staticmethod
    def _frame(payload: bytes) -> bytes:
        return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN

    def clean(self) -> bytes:
        payload = self._pick()
        self._sent.append(payload)
        return self._frame(payload)

    def bit_flips(self) -> bytes:
        data = bytearray(self._pick())
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(len(data))
            data[i] ^= 1 << self.rng.randrange(8)
        return self._frame(bytes(data))

    def truncation(self) -> bytes:
        payload = self._pick()
        cut = self.rng.randrange(len(payload))
        if self.rng.random() < 0.5:  # cut payload, frame still closed
            return self._frame(payload[:cut])
        return START_BLOCK + payload[:cut]  # never closed: the hang-up ends it

    def splice(self) -> bytes:
        a, b = self._pick(), self._pick()
        return self._frame(a[: self.rng.randrange(len(a))] + b[self.rng.randrange(len(b)):])

    def framing_bytes(self) -> bytes:
        data = bytearray(self._frame(self._pick()))
        for _ in range(self.rng.randint(1, 4)):
            at = self.rng.randrange(len(data) + 1)
            data[at:at] = self.rng.choice(_FRAMING)
        return bytes(data)

    def huge_field(self) -> bytes:
        payload = self._pick()
        segments = payload.split(b"\r")
        i = self.rng.randrange(len(segments))
        size = self.rng.randint(1024, HUGE_FIELD_MAX)
        segments[i] += b"|" + bytes([self.rng.randrange(0x20, 0x7F)]) * size
        return self._frame(b"\r".join(segments))

    def bad_charset(self) -> bytes:
        payload = self._pick()
        msh, sep, rest = payload.partition(b"\r")
        fields = msh.split(b"|")
        fields += [b""] * max(0, 18 - len(fields))
        fields[17] = self.rng.choice(_BAD_CHARSETS)
        body = b"|".join(fields) + sep + rest
        if self.rng.random() < 0.5:  # bytes that are no UTF-8 at all
            body += b"NTE|1||\xc3\x28\xa0\xa1\xf0\x28\x8c\xbc\r"
        return self._frame(body)

    def resend(self) -> bytes:
        """The same message again (same MSH-10): owed its original ACK."""
        payload = self.rng.choice(self._sent) if self._sent else self._pick()
        return self._frame(payload)

    def ack(self) -> bytes:
        """An ACK sent to the engine, as a confused peer does: owed nothing."""
        cid = self.rng.randrange(10**6)
        return self._frame(f"MSH|^~\\&|X|Y|PARCOURS|Z|20240101||ACK^R01^ACK|A{cid}|P|2.5\r"
                           f"MSA|AA|{cid}\r".encode())
