"""MLLP block framing: turn a byte stream into HL7 payloads and back.

The wire format comes from the HL7 MLLP transport spec (HL7 v2.5.1 Appendix C / MLLP
Release 2): every message travels as ``<VT> payload <FS><CR>``, with VT = 0x0B (start block),
FS = 0x1C and CR = 0x0D (end block). The payload must not contain VT or FS.

Real senders bend that rule in a handful of well-known ways (bytes before the start block,
no CR after FS, a message cut off and followed by a fresh VT, frames far larger than anything
sensible). The decoder accepts what can be recovered and *reports* the rest as events instead
of raising, so a listener can log it, answer it and keep the connection; the decision of what
to do with a bad frame belongs to the caller, not to the framing layer.

Payload bytes are handed over exactly as received: segment separators are not normalised
here because the engine stores the raw message and the HL7 reader owns normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\r"

DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
#: How much of an oversized or truncated frame is kept, so the engine can store what it got
#: (and read MSH to address its AR) without the decoder ever holding the whole thing.
HEAD_BYTES = 64 * 1024

# Between frames, line noise that carries no meaning (a CR after FS, CR LF from senders that
# terminate frames like text lines, keep-alive spaces) is dropped silently; anything else
# outside a frame is reported as junk so an operator can see a misbehaving sender.
_INTER_FRAME_WHITESPACE = b" \t\r\n"


def frame(payload: bytes) -> bytes:
    """Wrap one payload in MLLP start and end blocks.

    Refuses a payload that contains VT or FS: the receiver would cut it at that byte (the
    MLLP spec forbids them in the content), and failing here points at the producer instead
    of at a confused peer.
    """
    if START_BLOCK in payload or END_BLOCK in payload:
        raise ValueError("MLLP payload must not contain 0x0B or 0x1C")
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete frame, payload as received (without the block characters)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Junk:
    """Non-whitespace bytes seen outside any frame; only their count is kept."""

    size: int


@dataclass(frozen=True, slots=True)
class Oversized:
    """A frame that ended normally but was larger than the limit.

    ``size`` is the full payload size; ``head`` its first bytes (at most ``HEAD_BYTES`` and
    at most the limit). The rest was discarded as it arrived. ``cut``: the frame was within
    the limit but the listener had it cut to its head (``FrameDecoder.cut``: the process's
    budget for unfinished frames was spent).
    """

    size: int
    head: bytes
    cut: bool = False


@dataclass(frozen=True, slots=True)
class Truncated:
    """A frame that never got its end block: a new start block or the end of the stream came
    first. ``size`` counts every payload byte received; ``head`` is bounded as for Oversized.
    """

    size: int
    head: bytes


FrameEvent: TypeAlias = Frame | Junk | Oversized | Truncated


class FrameDecoder:
    """Incremental MLLP decoder with memory bounded by ``max_frame_bytes``.

    Feed it whatever the socket returned; it returns the events completed by those bytes.
    Frames may be split at any byte and several may arrive in one read. Searching uses
    ``bytes.find`` so the cost is in C, not in a per-byte Python loop.
    """

    __slots__ = ("_max", "_head_limit", "_buf", "_size", "_in_frame", "_overflow", "_cut")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self._max = max_frame_bytes
        self._head_limit = min(HEAD_BYTES, max_frame_bytes)
        self._buf = bytearray()
        self._size = 0  # payload bytes of the current frame, including discarded ones
        self._in_frame = False
        self._overflow = False
        self._cut = False

    @property
    def max_frame_bytes(self) -> int:
        return self._max

    def pending(self) -> int:
        """Bytes currently held for an unfinished frame (never more than the limit)."""
        return len(self._buf)

    def in_frame(self) -> bool:
        """Whether a start block was seen and its end block is still awaited."""
        return self._in_frame

    def cut(self) -> None:
        """Keep only the head of the frame in progress and drop the rest as it arrives, as
        for an oversized frame; it ends as ``Oversized(cut=True)`` (or ``Truncated``)."""
        if not self._in_frame:
            return
        self._cut = True
        self._overflow = True
        del self._buf[self._head_limit :]

    def feed(self, data: bytes) -> list[FrameEvent]:
        if not isinstance(data, bytes):
            data = bytes(data)
        events: list[FrameEvent] = []
        n = len(data)
        pos = 0
        junk = 0
        while pos < n:
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                stop = n if start < 0 else start
                if stop > pos:
                    junk += _count_junk(data, pos, stop)
                if start < 0:
                    break
                if junk:
                    events.append(Junk(junk))
                    junk = 0
                self._in_frame = True
                pos = start + 1
                continue

            end = data.find(END_BLOCK, pos)
            limit = n if end < 0 else end
            restart = data.find(START_BLOCK, pos, limit)
            if restart >= 0:
                # A new VT before FS: the sender gave up on the previous message (or lost
                # bytes). Report what we had and start over on the new frame.
                self._append(data, pos, restart)
                events.append(self._finish(truncated=True))
                self._in_frame = True
                pos = restart + 1
                continue
            if end < 0:
                self._append(data, pos, n)
                break
            if not self._buf and not self._overflow and end - pos <= self._max:
                # Fast path: the whole frame is inside this read, no copy into the buffer.
                events.append(Frame(data[pos:end]))
                self._in_frame = False
            else:
                self._append(data, pos, end)
                events.append(self._finish(truncated=False))
            # A CR after FS (or its absence) needs no state: CR outside a frame is ignored.
            pos = end + 1
        if junk:
            events.append(Junk(junk))
        return events

    def close(self) -> list[FrameEvent]:
        """End of stream: an unfinished frame is reported as Truncated, and the decoder is
        reset so it can be reused."""
        if not self._in_frame:
            return []
        return [self._finish(truncated=True)]

    def _append(self, data: bytes, start: int, stop: int) -> None:
        length = stop - start
        if length <= 0:
            return
        self._size += length
        if self._overflow:
            return  # the head is already complete; the rest is dropped as it arrives
        if self._size <= self._max:
            self._buf += memoryview(data)[start:stop]
            return
        # This chunk pushed the frame past the limit: keep only the head from now on.
        self._overflow = True
        missing = self._head_limit - len(self._buf)
        if missing > 0:
            self._buf += memoryview(data)[start : start + missing]
        else:
            del self._buf[self._head_limit :]

    def _finish(self, *, truncated: bool) -> FrameEvent:
        event: FrameEvent
        if truncated:
            event = Truncated(self._size, bytes(self._buf[: self._head_limit]))
        elif self._overflow:
            event = Oversized(self._size, bytes(self._buf), self._cut and self._size <= self._max)
        else:
            event = Frame(bytes(self._buf))
        self._buf = bytearray()
        self._size = 0
        self._in_frame = False
        self._overflow = False
        self._cut = False
        return event


def _count_junk(data: bytes, start: int, stop: int) -> int:
    # translate(None, delete) drops the whitespace bytes; what remains is the junk.
    return len(data[start:stop].translate(None, _INTER_FRAME_WHITESPACE))
