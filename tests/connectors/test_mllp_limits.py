"""Listener limits on real sockets: connections per channel, per peer and per process, the
frame-progress timeout, the unfinished-frame budget, and logs that do not storm."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from connectors.mllp.framing import FrameDecoder, Oversized
from connectors.mllp.limits import ListenerLimits, LogOncePerSecond, SharedLimits
from connectors.mllp.server import MLLPServer, Peer, install_accept_error_handler
from tests.connectors.test_mllp_server import ack, open_raw, read_frames, serving

MSH = b"MSH|^~\\&|LAB|X|P|Y|20260101||ORU^R01|C1|P|2.5\r"


async def until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(timeout):
        return await reader.read()


class Cuts:
    """An on_cut handler that records why each frame was not kept whole, and answers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, bytes]] = []

    async def __call__(self, head: bytes, size: int, reason: str, peer: Peer) -> bytes:
        self.seen.append((reason, size, head))
        return b"MSH|^~\\&|P|Y|LAB|X|20260101||ACK|A1|P|2.5\rMSA|AR|C1\r"


async def test_over_max_connections_new_ones_are_closed_at_once() -> None:
    async with serving(limits=ListenerLimits(max_connections=3)) as server:
        kept = [await open_raw(server) for _ in range(3)]
        await asyncio.sleep(0.1)
        reader, writer = await open_raw(server)
        assert await closed_by_server(reader) == b""
        assert server.stats.connections_refused == 1 and server.connections == 3
        # The kept ones still work.
        kept[0][1].write(b"\x0b" + MSH + b"\x1c\r")
        assert len(await read_frames(kept[0][0], 1)) == 1
        for _, w in kept:
            w.close()
        writer.close()


async def test_per_peer_limit_counts_one_address() -> None:
    async with serving(limits=ListenerLimits(max_connections=None,
                                             max_connections_per_peer=2)) as server:
        conns = [await open_raw(server) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, _ = await open_raw(server)
        assert await closed_by_server(reader) == b""
        # One leaves: the address gets its place back.
        conns[0][1].close()
        await asyncio.sleep(0.2)
        reader, writer = await open_raw(server)
        writer.write(b"\x0b" + MSH + b"\x1c\r")
        assert len(await read_frames(reader, 1)) == 1
        assert server.stats.connections_refused == 1
        writer.close()
        conns[1][1].close()


async def test_process_limit_is_shared_by_listeners() -> None:
    shared = SharedLimits(max_connections=2)
    async with serving(shared=shared) as a, serving(shared=shared) as b:
        one = await open_raw(a)
        two = await open_raw(b)
        await asyncio.sleep(0.1)
        assert shared.connections == 2
        reader, _ = await open_raw(a)
        assert await closed_by_server(reader) == b""
        assert shared.refused["max_connections_total"] == 1
        one[1].close()
        two[1].close()
        await asyncio.sleep(0.2)
        assert shared.connections == 0


async def test_a_trickling_frame_is_answered_and_closed_after_frame_timeout() -> None:
    """Slowloris: one byte every 0.2 s never trips a 5 s idle timeout; the 1 s frame timeout
    does, and the frame is handed over as cut with that reason (answered AR). (An idle
    timeout close to the frame timeout would race it on a loaded machine.)"""
    cuts = Cuts()
    async with serving(on_cut=cuts, idle_timeout=5.0,
                       limits=ListenerLimits(frame_timeout=1.0)) as server:
        reader, writer = await open_raw(server)
        writer.write(b"\x0b" + MSH)
        got = asyncio.ensure_future(closed_by_server(reader, timeout=10.0))
        sent = 0
        while not got.done() and sent < 40:
            writer.write(b"x")
            sent += 1
            await asyncio.sleep(0.2)
        data = await got
        assert b"MSA|AR" in data
        assert [c[0] for c in cuts.seen] == ["frame_timeout"]
        assert cuts.seen[0][2].startswith(MSH)
        assert server.stats.frame_timeouts == 1
        assert sent < 40  # closed by the frame timeout, not by the loop ending
        writer.close()


async def test_frames_that_complete_in_time_are_not_touched_by_the_timeout() -> None:
    async with serving(limits=ListenerLimits(frame_timeout=1.0)) as server:
        reader, writer = await open_raw(server)
        for _ in range(3):  # each frame in two halves, 0.6 s apart: 1.8 s in all
            writer.write(b"\x0b" + MSH[:10])
            await asyncio.sleep(0.6)
            writer.write(MSH[10:] + b"\x1c\r")
            assert len(await read_frames(reader, 1)) == 1
        assert server.stats.frame_timeouts == 0
        writer.close()


async def test_over_the_budget_a_frame_is_cut_to_its_head_and_answered() -> None:
    shared = SharedLimits(pending_frame_bytes=1024 * 1024)
    cuts = Cuts()
    async with serving(on_cut=cuts, shared=shared) as server:
        a_reader, a = await open_raw(server)
        a.write(b"\x0b" + MSH + b"x" * 900_000)  # within budget, unfinished
        await a.drain()
        await until(lambda: shared.pending >= 900_000)
        assert shared.pending <= 1024 * 1024
        b_reader, b = await open_raw(server)
        b.write(b"\x0b" + MSH + b"y" * 800_000)  # would go over: cut
        await b.drain()
        await until(lambda: server.stats.bytes_received >= 1_700_000 + 2 * len(MSH))
        assert shared.pending <= 1024 * 1024 and shared.frames_cut == 1
        b.write(b"\x1c\r")
        assert b"MSA|AR" in (await read_frames(b_reader, 1))[0]
        assert cuts.seen[0][0] == "over_budget" and cuts.seen[0][1] == len(MSH) + 800_000
        assert cuts.seen[0][2].startswith(MSH) and len(cuts.seen[0][2]) <= 64 * 1024
        a.write(b"\x1c\r")  # the first frame ends whole: it was never over the budget
        assert len(await read_frames(a_reader, 1)) == 1
        assert len(cuts.seen) == 1
        await until(lambda: shared.pending == 0)
        assert shared.frames_cut == 1
        a.close()
        b.close()


async def test_a_connection_whose_head_does_not_fit_is_answered_and_closed() -> None:
    shared = SharedLimits(pending_frame_bytes=1024 * 1024)
    cuts = Cuts()
    async with serving(on_cut=cuts, shared=shared) as server:
        _, a = await open_raw(server)
        a.write(b"\x0b" + MSH + b"x" * (1024 * 1024 - 200))  # the whole budget
        await a.drain()
        await until(lambda: shared.pending >= 1024 * 1024 - 200)
        b_reader, b = await open_raw(server)
        b.write(b"\x0b" + MSH + b"y" * 100_000)
        data = await closed_by_server(b_reader)
        assert b"MSA|AR" in data
        assert cuts.seen[0][0] == "over_budget"
        a.close()
        b.close()


async def test_a_peer_still_writing_after_its_answer_reads_it_without_a_reset() -> None:
    """Its frame over the budget, the peer is answered AR while it is still sending: the
    listener half-closes and discards the rest instead of closing with unread bytes (which
    makes the kernel reset the connection, and the peer lose the AR)."""
    shared = SharedLimits(pending_frame_bytes=1024 * 1024)
    cuts = Cuts()
    async with serving(on_cut=cuts, shared=shared) as server:
        _, a = await open_raw(server)
        a.write(b"\x0b" + MSH + b"x" * (1024 * 1024 - 200))  # the whole budget
        await a.drain()
        await until(lambda: shared.pending >= 1024 * 1024 - 200)
        b_reader, b = await open_raw(server)
        b.write(b"\x0b" + MSH)
        for _ in range(16):  # 16 MiB more, well after the answer was written
            b.write(b"y" * 1024 * 1024)
            await b.drain()
        b.write(b"\x1c\r")
        b.write_eof()
        data = await closed_by_server(b_reader)
        assert data.count(b"MSA|AR") == 1
        assert cuts.seen[0][0] == "over_budget"
        a.close()
        b.close()


async def test_frames_held_back_by_backpressure_count_in_the_budget() -> None:
    """A frame that completes while its connection owes max_in_flight replies waits in the
    listener's backlog: it left the decoder but is still in memory, so it keeps its bytes
    in the unfinished-frame budget, and another connection's frame is cut meanwhile."""
    shared = SharedLimits(pending_frame_bytes=1024 * 1024)
    cuts = Cuts()
    release = asyncio.Event()

    async def slow(payload: bytes, peer: Peer) -> bytes:
        await release.wait()
        return b"MSH|^~\\&|P|Y|LAB|X|20260101||ACK|A1|P|2.5\rMSA|AA|C1\r"

    async with serving(slow, on_cut=cuts, shared=shared, max_in_flight=1) as server:
        a_reader, a = await open_raw(server)
        a.write(b"\x0b" + MSH + b"\x1c\r")  # in flight: the handler waits
        a.write(b"\x0b" + MSH + b"x" * 700_000 + b"\x1c\r")  # complete, held back
        await a.drain()
        await until(lambda: server.stats.bytes_received >= 700_000 + 2 * len(MSH))
        await asyncio.sleep(0.1)
        assert server.stats.frames_received == 1  # the second one was not dispatched
        assert shared.pending >= 700_000
        b_reader, b = await open_raw(server)
        b.write(b"\x0b" + MSH + b"y" * 500_000)  # would take the budget over: cut
        await b.drain()
        await until(lambda: shared.frames_cut == 1)
        assert shared.pending <= 1024 * 1024
        release.set()
        assert len(await read_frames(a_reader, 2)) == 2  # the held frame is processed
        b.write(b"\x1c\r")
        assert b"MSA|AR" in (await read_frames(b_reader, 1))[0]
        assert cuts.seen[0][0] == "over_budget"
        await until(lambda: shared.pending == 0)
        a.close()
        b.close()


def test_decoder_cut_keeps_the_head_and_reports_it() -> None:
    d = FrameDecoder(max_frame_bytes=1_000_000)
    assert d.feed(b"\x0b" + MSH + b"z" * 200_000) == []
    d.cut()
    assert d.pending() <= 64 * 1024
    events = d.feed(b"z" * 100_000 + b"\x1c\r")
    assert len(events) == 1 and isinstance(events[0], Oversized) and events[0].cut
    assert events[0].size == len(MSH) + 300_000 and events[0].head.startswith(MSH)


def test_log_once_per_second_counts_what_it_suppressed(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    limiter = LogOncePerSecond(logging.getLogger("parcours.test"), interval=3600)
    with caplog.at_level(logging.WARNING, logger="parcours.test"):
        for _ in range(1000):
            limiter.warning("flood", "refused")
        limiter.warning("other", "different reason")
    assert [r.getMessage() for r in caplog.records] == ["refused", "different reason"]


async def test_accept_errors_become_one_line_a_second_without_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    install_accept_error_handler(loop)
    install_accept_error_handler(loop)  # idempotent
    sock = socket.socket()
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(500):
                loop.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"), "socket": sock})
    finally:
        sock.close()
    lines = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "Too many open files" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_refused_flood_logs_a_line_per_second_not_per_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    async with serving(limits=ListenerLimits(max_connections=1)) as server:
        _, keep = await open_raw(server)
        await asyncio.sleep(0.05)
        with caplog.at_level(logging.INFO, logger="parcours.mllp"):
            refused: list[Any] = [await open_raw(server) for _ in range(200)]
            await asyncio.gather(*(closed_by_server(r) for r, _ in refused))
        lines = [r for r in caplog.records if "connection refused" in r.getMessage()]
        assert server.stats.connections_refused == 200
        assert 1 <= len(lines) <= 20  # one a second, not one per connection
        for _, w in refused:
            w.close()
        keep.close()


def test_an_unbounded_listener_is_possible_but_not_the_default() -> None:
    server = MLLPServer(ack, limits=ListenerLimits(None, None, None))
    assert server.limits.max_connections is None
    assert MLLPServer(ack).limits == ListenerLimits()
