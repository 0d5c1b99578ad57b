"""MLLP framing: the decoder must recover every frame a real sender can produce and report,
never raise on, whatever else arrives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mllp.framing import (
    HEAD_BYTES,
    Frame,
    FrameDecoder,
    Junk,
    Oversized,
    Truncated,
    frame,
)

MSG_A = b"MSH|^~\\&|LAB|HOSP|||20240101||ORU^R01|1|P|2.5.1\rPID|1||123\r"
MSG_B = b"MSH|^~\\&|LAB|HOSP|||20240101||ADT^A01|2|P|2.5.1\r"


def frames_of(events: list) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, Frame)]


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list:
    events = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def test_frame_wraps_payload_in_start_and_end_blocks() -> None:
    assert frame(b"abc") == b"\x0babc\x1c\r"


@pytest.mark.parametrize("bad", [b"a\x0bb", b"a\x1cb"])
def test_frame_refuses_block_characters_in_payload(bad: bytes) -> None:
    with pytest.raises(ValueError):
        frame(bad)


def test_single_frame_round_trip_keeps_bytes_exactly() -> None:
    # LF and CRLF inside the payload are not normalised: the engine stores raw bytes.
    payload = b"MSH|x\r\nPID|1\nOBX|1\r"
    assert FrameDecoder().feed(frame(payload)) == [Frame(payload)]


def test_several_frames_in_one_read() -> None:
    events = FrameDecoder().feed(frame(MSG_A) + frame(MSG_B) + frame(b""))
    assert events == [Frame(MSG_A), Frame(MSG_B), Frame(b"")]


def test_frame_split_at_every_byte() -> None:
    stream = frame(MSG_A) + frame(MSG_B)
    decoder = FrameDecoder()
    events = feed_all(decoder, [stream[i : i + 1] for i in range(len(stream))])
    assert events == [Frame(MSG_A), Frame(MSG_B)]
    assert decoder.pending() == 0


def test_bytes_before_start_block_are_reported_as_junk() -> None:
    events = FrameDecoder().feed(b"hello" + frame(MSG_A))
    assert events == [Junk(5), Frame(MSG_A)]


def test_whitespace_between_frames_is_silent() -> None:
    stream = b"\r\n " + frame(MSG_A) + b"\n\r\n\t" + frame(MSG_B) + b"\r\n"
    assert FrameDecoder().feed(stream) == [Frame(MSG_A), Frame(MSG_B)]


def test_junk_count_ignores_whitespace_mixed_in() -> None:
    assert FrameDecoder().feed(b"ab\r\ncd") == [Junk(4)]


def test_missing_cr_after_end_block() -> None:
    stream = b"\x0b" + MSG_A + b"\x1c" + b"\x0b" + MSG_B + b"\x1c"
    assert FrameDecoder().feed(stream) == [Frame(MSG_A), Frame(MSG_B)]


def test_frame_emitted_at_end_block_and_cr_in_next_read_swallowed() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0b" + MSG_A + b"\x1c") == [Frame(MSG_A)]
    assert decoder.feed(b"\r") == []
    assert decoder.feed(frame(MSG_B)) == [Frame(MSG_B)]


def test_new_start_block_inside_frame_truncates_previous() -> None:
    decoder = FrameDecoder()
    events = decoder.feed(b"\x0bPARTIAL" + frame(MSG_B))
    assert events == [Truncated(7, b"PARTIAL"), Frame(MSG_B)]


def test_new_start_block_in_later_read_truncates_buffered_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0bPART") == []
    assert decoder.pending() == 4
    assert decoder.feed(b"IAL" + frame(MSG_B)) == [Truncated(7, b"PARTIAL"), Frame(MSG_B)]


def test_close_turns_partial_frame_into_truncated_and_resets() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x0b" + MSG_A[:10])
    assert decoder.close() == [Truncated(10, MSG_A[:10])]
    assert decoder.pending() == 0
    assert decoder.close() == []
    assert decoder.feed(frame(MSG_B)) == [Frame(MSG_B)]


def test_stray_end_block_outside_frame_is_junk() -> None:
    assert FrameDecoder().feed(b"\x1c\r" + frame(MSG_A)) == [Junk(1), Frame(MSG_A)]


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    assert FrameDecoder(max_frame_bytes=10).feed(frame(b"x" * 10)) == [Frame(b"x" * 10)]


def test_oversized_frame_in_one_read_keeps_only_head() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    events = decoder.feed(frame(b"0123456789ABC") + frame(b"ok"))
    assert events == [Oversized(13, b"0123456789"), Frame(b"ok")]


def test_oversized_frame_memory_stays_bounded() -> None:
    limit = 1024 * 1024
    total = 40 * 1024 * 1024
    decoder = FrameDecoder(max_frame_bytes=limit)
    # 64 KiB of every byte value except the two block characters.
    chunk = (bytes(range(256)) * 256).replace(b"\x0b", b"x").replace(b"\x1c", b"y")
    events = decoder.feed(b"\x0b")
    peak = 0
    for _ in range(total // len(chunk)):
        events += decoder.feed(chunk)
        peak = max(peak, decoder.pending())
    events += decoder.feed(b"\x1c\r" + frame(b"next"))
    assert peak <= limit
    assert len(events) == 2
    oversized, nxt = events
    assert isinstance(oversized, Oversized)
    assert oversized.size == total
    assert oversized.head == (chunk * (HEAD_BYTES // len(chunk) + 1))[:HEAD_BYTES]
    assert nxt == Frame(b"next")
    assert decoder.pending() == 0


def test_truncated_oversized_frame_reports_full_size_and_bounded_head() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    decoder.feed(b"\x0b" + b"a" * 500)
    assert decoder.pending() <= 100
    assert decoder.feed(frame(b"b")) == [Truncated(500, b"a" * 100), Frame(b"b")]


def test_head_is_capped_at_64_kib() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024 * 1024)
    payload = b"z" * (1024 * 1024 + 1)
    [event] = decoder.feed(frame(payload))
    assert isinstance(event, Oversized)
    assert len(event.head) == HEAD_BYTES


def test_accepts_bytearray_and_memoryview() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(bytearray(frame(b"a"))) == [Frame(b"a")]
    assert decoder.feed(memoryview(frame(b"b"))) == [Frame(b"b")]


def test_invalid_limit_rejected() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_bytes=0)


# Payloads as real senders produce them: anything but the two block characters.
payload_bytes = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
separator = st.sampled_from([b"", b"\r", b"\r\n", b"\n", b" "])


@st.composite
def stream_and_splits(draw: st.DrawFn) -> tuple[list[bytes], bytes, list[int]]:
    payloads = draw(st.lists(payload_bytes, max_size=8))
    parts = []
    for payload in payloads:
        parts.append(draw(separator))
        # The CR after FS is optional in practice.
        parts.append(b"\x0b" + payload + b"\x1c" + draw(st.sampled_from([b"\r", b""])))
    stream = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    return payloads, stream, cuts


@settings(max_examples=300, deadline=None)
@given(stream_and_splits())
def test_any_split_of_a_valid_stream_yields_the_same_frames(
    case: tuple[list[bytes], bytes, list[int]],
) -> None:
    payloads, stream, cuts = case
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    decoder = FrameDecoder()
    events = feed_all(decoder, chunks) + decoder.close()
    assert events == [Frame(p) for p in payloads]
    assert decoder.pending() == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=10), st.integers(1, 64))
def test_random_bytes_never_raise_and_stay_bounded(chunks: list[bytes], limit: int) -> None:
    decoder = FrameDecoder(max_frame_bytes=limit)
    events = []
    for chunk in chunks:
        events += decoder.feed(chunk)
        assert decoder.pending() <= limit
    events += decoder.close()
    received = sum(len(c) for c in chunks)
    # Every byte is accounted for at most once across the reported events.
    accounted = sum(
        len(e.payload) if isinstance(e, Frame) else e.size for e in events
    )
    assert accounted <= received
    for event in events:
        if isinstance(event, Frame):
            assert len(event.payload) <= limit
            assert b"\x0b" not in event.payload and b"\x1c" not in event.payload
        elif isinstance(event, (Oversized, Truncated)):
            assert len(event.head) <= min(limit, HEAD_BYTES)
            assert len(event.head) <= event.size


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=10))
def test_random_stream_decodes_the_same_whatever_the_split(data: bytes, cuts: list[int]) -> None:
    whole = FrameDecoder(max_frame_bytes=50)
    expected = whole.feed(data) + whole.close()
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    split = FrameDecoder(max_frame_bytes=50)
    events = feed_all(split, [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)])
    events += split.close()

    def merge_junk(evs: list) -> list:
        # Junk is reported per read, so a split may cut one run in two; compare totals.
        out: list = []
        for e in evs:
            if isinstance(e, Junk) and out and isinstance(out[-1], Junk):
                out[-1] = Junk(out[-1].size + e.size)
            else:
                out.append(e)
        return out

    assert merge_junk(events) == merge_junk(expected)
