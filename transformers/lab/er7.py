"""ORU^R01 observations for normalisation, read with the project's one ER7 reader.

Only what normalisation needs: MSH-4 (the sender) and the OBX segments. The reading itself is
`transformers/hl7/reader.py`'s (separators from MSH-1/MSH-2, HL7 v2.5.1 §2.5.4; escape
sequences per §2.7): this module used to carry a reader of its own, which decoded `\\Xhh\\`
as UTF-8 whatever MSH-18 declared, so a latin-1 laboratory's `\\XE9\\` became U+FFFD here
while the rest of the engine read "é".
"""

from __future__ import annotations

from transformers.hl7.reader import HL7ReadError, Message, Segment
from transformers.lab.observation import RawObservation


class Er7Error(ValueError):
    """The text is not an HL7 v2 message we can read."""


def _first(seg: Segment, n: int, component: int = 1) -> str:
    """First repetition, one component, its first subcomponent, unescaped."""
    return seg.get(n, 1, component, 1)


def observations_from_oru(text: str, charset: str = "utf-8") -> tuple[str, list[RawObservation]]:
    """Return (sender = MSH-4.1, observations) from an ER7 ORU message.

    `charset` is the message's character set (MSH-18 or the channel's, as intake resolved
    it): `\\Xhh\\` escapes are bytes in that set (HL7 v2.5.1 §2.7.5).
    """
    text = text.strip("\x0b\x1c\r\n")
    if not text:
        raise Er7Error("empty message")
    try:
        msg = Message.parse(text, charset)
    except HL7ReadError as exc:
        raise Er7Error(str(exc) or "message does not start with an MSH segment") from None
    return observations_from_message(msg)


def observations_from_message(msg: Message) -> tuple[str, list[RawObservation]]:
    """The same as `observations_from_oru`, from a message already read: the router reads
    each message once and its transformers share that reading (transformers/exchange.py)."""
    try:
        sender = _first(msg.msh, 4)
    except (HL7ReadError, IndexError) as exc:
        raise Er7Error(str(exc) or "message does not start with an MSH segment") from None
    return sender, [raw_observation(obx) for obx in msg.segments_named("OBX")]


def raw_observation(obx: Segment) -> RawObservation:
    """One OBX as the normalisation reads it (HL7 v2.5.1 §7.4.2). Each field is split once
    (`Segment.leading`), not once per component asked for."""
    c3 = obx.leading(3) + _EMPTY6
    c6 = obx.leading(6) + _EMPTY6
    return RawObservation(
        set_id=obx.field(1),
        value_type=obx.field(2),
        code=c3[0],
        text=c3[1],
        coding_system=c3[2],
        alt_code=c3[3],
        alt_text=c3[4],
        alt_coding_system=c3[5],
        value=obx.get(5),  # first repetition, components kept joined by '^'
        units=c6[0] or c6[1],
        reference_range=obx.get(7),
        abnormal_flags=_lead(obx, 8),
        result_status=obx.field(11),
        observed_at=_lead(obx, 14),
        performing_lab=_lead(obx, 23) or _lead(obx, 15),
    )


_EMPTY6 = [""] * 6


def _lead(seg: Segment, n: int) -> str:
    first = seg.leading(n)
    return first[0] if first else ""
