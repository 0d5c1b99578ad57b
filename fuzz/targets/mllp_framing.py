"""MLLP frame decoder (`connectors.mllp.framing`).

Input: byte 0 picks a small frame limit (so oversized frames are common), byte 1 the size of
the reads the stream is cut into (at most a dozen); the rest is the stream. A bug is any
exception from `FrameDecoder.feed`/`close`, or:
- a payload that contains VT or FS (MLLP forbids them: the decoder must have cut there);
- more bytes held than the limit, or a head longer than promised;
- different frames depending on how the stream was cut into reads (TCP gives no boundaries);
- `frame()` of a payload without VT/FS not decoding back to that payload.
"""

from __future__ import annotations

from connectors.mllp.framing import (
    END_BLOCK,
    HEAD_BYTES,
    START_BLOCK,
    Frame,
    FrameDecoder,
    FrameEvent,
    Junk,
    Oversized,
    Truncated,
    frame,
)
from fuzz import seeds
from fuzz.harness import Harness, check


def _decode(stream: bytes, limit: int, chunk: int) -> tuple[list[FrameEvent], int]:
    decoder = FrameDecoder(limit)
    events: list[FrameEvent] = []
    for start in range(0, len(stream), chunk):
        events += decoder.feed(stream[start : start + chunk])
        check(decoder.pending() <= limit, "decoder holds more than the frame limit")
    events += decoder.close()
    check(not decoder.in_frame() and decoder.pending() == 0, "close() leaves state behind")
    junk = sum(e.size for e in events if isinstance(e, Junk))
    return [e for e in events if not isinstance(e, Junk)], junk


def target(data: bytes) -> None:
    if len(data) < 2:
        return
    limit = 1 + data[0] * 8
    stream = data[2:]
    # At most a dozen reads: one-byte reads of a long stream cost time, not coverage.
    chunk = max(1 + data[1], len(stream) // 12)
    whole, junk_whole = _decode(stream, limit, max(1, len(stream)))
    cut, junk_cut = _decode(stream, limit, chunk)
    check(whole == cut, "frames depend on how the stream is cut into reads")
    check(junk_whole == junk_cut, "junk count depends on how the stream is cut into reads")
    head_limit = min(HEAD_BYTES, limit)
    for event in whole:
        if isinstance(event, Frame):
            check(START_BLOCK not in event.payload and END_BLOCK not in event.payload,
                  "a payload carries VT or FS")
            check(len(event.payload) <= limit, "a frame larger than the limit")
        elif isinstance(event, Oversized | Truncated):
            check(len(event.head) <= head_limit, "a head longer than HEAD_BYTES/limit")
            check(event.size >= len(event.head), "a head longer than its frame")
            check(START_BLOCK not in event.head and END_BLOCK not in event.head,
                  "a head carries VT or FS")
    payload = stream.replace(START_BLOCK, b"").replace(END_BLOCK, b"")
    events = FrameDecoder(max(1, len(payload))).feed(frame(payload))
    check(events == [Frame(payload)], "frame() does not decode back to its payload")


HARNESS = Harness("mllp_framing", target, (), seeds.mllp_streams, max_len=4096)
