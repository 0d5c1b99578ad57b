"""MLLP listener and sender over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from connectors.mllp import (
    Frame,
    FrameDecoder,
    MLLPClient,
    MLLPConnectionError,
    MLLPServer,
    MLLPTimeout,
    Peer,
    frame,
)

pytestmark = pytest.mark.timeout(60)


async def ack(payload: bytes, peer: Peer) -> bytes | None:
    return b"ACK|" + payload


@asynccontextmanager
async def serving(handler: Callable[..., Any] = ack, **options: Any) -> AsyncIterator[MLLPServer]:
    server = MLLPServer(handler, host="127.0.0.1", port=0, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace=1.0)


async def open_raw(server: MLLPServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_frames(
    reader: asyncio.StreamReader, count: int | None = None, timeout: float = 5.0
) -> list[bytes]:
    """Read reply frames until ``count`` arrived, or until EOF when count is None."""
    decoder = FrameDecoder()
    frames: list[bytes] = []
    async with asyncio.timeout(timeout):
        while count is None or len(frames) < count:
            data = await reader.read(65536)
            if not data:
                break
            frames += [e.payload for e in decoder.feed(data) if isinstance(e, Frame)]
    return frames


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def future_handler() -> tuple[Callable[[bytes, Peer], Awaitable[bytes | None]], list]:
    """A pipelining handler: returns an unresolved future per frame, for the test to
    resolve in whatever order it likes."""
    calls: list[tuple[bytes, asyncio.Future[bytes | None]]] = []

    def handler(payload: bytes, peer: Peer) -> Awaitable[bytes | None]:
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        calls.append((payload, fut))
        return fut

    return handler, calls


# --- listener -------------------------------------------------------------------------------


async def test_reply_round_trip_and_peer_identity() -> None:
    seen: list[Peer] = []

    async def handler(payload: bytes, peer: Peer) -> bytes:
        seen.append(peer)
        return b"ACK|" + payload

    async with serving(handler) as server:
        reader, writer = await open_raw(server)
        writer.write(frame(b"MSH|1"))
        assert await read_frames(reader, 1) == [b"ACK|MSH|1"]
        local_port = writer.get_extra_info("sockname")[1]
        writer.close()
    [peer] = seen
    assert peer.host == "127.0.0.1"
    assert peer.port == local_port
    assert peer.tls_subject is None
    assert peer.connection_id == 1
    assert server.stats.frames_received == 1
    assert server.stats.bytes_sent == len(frame(b"ACK|MSH|1"))


async def test_pipelined_replies_follow_frame_order_when_handlers_finish_out_of_order() -> None:
    handler, calls = future_handler()
    count = 10
    async with serving(handler) as server:
        reader, writer = await open_raw(server)
        writer.write(b"".join(frame(b"m%d" % i) for i in range(count)))
        # All frames reach the handler before any reply is owed: the call is synchronous
        # and does not wait for earlier replies. (A server that awaited each reply before
        # calling the next handler would hang here.)
        await wait_until(lambda: len(calls) == count)
        assert [p for p, _ in calls] == [b"m%d" % i for i in range(count)]
        for payload, fut in reversed(calls):
            fut.set_result(b"ACK|" + payload)
            await asyncio.sleep(0)
        assert await read_frames(reader, count) == [b"ACK|m%d" % i for i in range(count)]
        writer.close()


async def test_none_reply_sends_nothing() -> None:
    async def handler(payload: bytes, peer: Peer) -> bytes | None:
        return None if payload.startswith(b"NE") else b"ACK|" + payload

    async with serving(handler) as server:
        reader, writer = await open_raw(server)
        writer.write(frame(b"NE1") + frame(b"NE2") + frame(b"AL3") + frame(b"NE4"))
        assert await read_frames(reader, 1) == [b"ACK|AL3"]
        await wait_until(lambda: server.stats.frames_received == 4)
        writer.write_eof()
        assert await read_frames(reader) == []  # nothing else before the server closes
        writer.close()


async def test_backpressure_stops_reading_at_max_in_flight() -> None:
    handler, calls = future_handler()
    async with serving(handler, max_in_flight=4) as server:
        reader, writer = await open_raw(server)
        writer.write(b"".join(frame(b"m%d" % i) for i in range(10)))
        await wait_until(lambda: len(calls) == 4)
        await asyncio.sleep(0.3)
        assert len(calls) == 4  # the other six wait in the socket, not in the handler
        replies: list[bytes] = []
        resolved = 0
        while len(replies) < 10:
            await wait_until(lambda r=resolved: len(calls) > r)
            assert len(calls) - len(replies) <= 4
            for payload, fut in calls[resolved:]:
                fut.set_result(b"ACK|" + payload)
            resolved = len(calls)
            replies += await read_frames(reader, resolved - len(replies))
        assert replies == [b"ACK|m%d" % i for i in range(10)]
        writer.close()


async def test_oversized_frame_is_not_buffered_answered_and_connection_kept() -> None:
    limit = 1024 * 1024
    total = 40 * 1024 * 1024
    oversized: list[tuple[bytes, int]] = []

    async def on_oversized(head: bytes, size: int, peer: Peer) -> bytes:
        oversized.append((head, size))
        return b"AR|too large"

    async with serving(max_frame_bytes=limit, on_oversized=on_oversized) as server:
        reader, writer = await open_raw(server)
        chunk = b"OBX|" + b"7" * (256 * 1024 - 4)
        writer.write(b"\x0b")
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        writer.write(b"\x1c\r" + frame(b"MSH|next"))
        assert await read_frames(reader, 2, timeout=30) == [b"AR|too large", b"ACK|MSH|next"]
        writer.close()
    [(head, size)] = oversized
    assert size == total
    assert head == chunk[: 64 * 1024]
    assert server.stats.oversized_frames == 1
    assert server.stats.bytes_received >= total
    # Memory stayed bounded: the decoder never held more than the limit.
    assert 0 < server.stats.peak_pending_bytes <= limit


async def test_oversized_without_callback_is_dropped_and_connection_kept() -> None:
    async with serving(max_frame_bytes=16) as server:
        reader, writer = await open_raw(server)
        writer.write(frame(b"x" * 100) + frame(b"small"))
        assert await read_frames(reader, 1) == [b"ACK|small"]
        assert server.stats.oversized_frames == 1
        writer.close()


async def test_truncated_frame_goes_to_on_oversized_in_order() -> None:
    truncated: list[tuple[bytes, int]] = []

    async def on_oversized(head: bytes, size: int, peer: Peer) -> bytes:
        truncated.append((head, size))
        return b"AR|%d" % size

    async with serving(on_oversized=on_oversized) as server:
        reader, writer = await open_raw(server)
        writer.write(b"\x0bPARTIAL" + frame(b"full"))
        assert await read_frames(reader, 2) == [b"AR|7", b"ACK|full"]
        assert truncated == [(b"PARTIAL", 7)]
        # A frame cut off by the end of the stream is reported too.
        writer.write(b"\x0bHALF")
        writer.write_eof()
        await wait_until(lambda: len(truncated) == 2)
        assert truncated[1] == (b"HALF", 4)
        assert server.stats.truncated_frames == 2
        writer.close()


async def test_idle_timeout_closes_a_silent_client() -> None:
    async with serving(idle_timeout=0.3) as server:
        reader, writer = await open_raw(server)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        await wait_until(lambda: server.stats.connections_open == 0)
        writer.close()


async def test_idle_timeout_waits_for_replies_still_owed() -> None:
    async def slow(payload: bytes, peer: Peer) -> bytes:
        await asyncio.sleep(0.9)
        return b"ACK|" + payload

    async with serving(slow, idle_timeout=0.3) as server:
        reader, writer = await open_raw(server)
        writer.write(frame(b"slow"))
        assert await read_frames(reader, 1) == [b"ACK|slow"]
        # The connection outlived three idle periods because a reply was owed, and the
        # idle period restarts when the reply is written: it is still usable.
        writer.write(frame(b"again"))
        assert await read_frames(reader, 1) == [b"ACK|again"]
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # and then the idle timeout applies
        assert server.stats.connections_total == 1
        writer.close()


async def test_idle_timeout_answers_a_frame_left_open_then_closes() -> None:
    """A sender that stops mid-frame: the part received is reported as truncated (so the
    engine stores it and answers AR), then the connection closes."""

    async def on_oversized(head: bytes, size: int, peer: Peer) -> bytes:
        return b"AR|" + head

    async with serving(on_oversized=on_oversized, idle_timeout=0.3) as server:
        reader, writer = await open_raw(server)
        writer.write(frame(b"one") + b"\x0bMSH|stalled")
        assert await read_frames(reader) == [b"ACK|one", b"AR|MSH|stalled"]  # then EOF
        assert server.stats.truncated_frames == 1
        writer.close()


async def test_half_closed_sender_still_gets_every_reply_in_order() -> None:
    handler, calls = future_handler()
    async with serving(handler) as server:
        reader, writer = await open_raw(server)
        writer.write(b"".join(frame(b"h%d" % i) for i in range(5)))
        writer.write_eof()  # nothing more to send; the replies are still owed
        await wait_until(lambda: len(calls) == 5)
        for payload, fut in reversed(calls):  # resolved last-first
            fut.set_result(b"ACK|" + payload)
        assert await read_frames(reader) == [b"ACK|h%d" % i for i in range(5)]
        await wait_until(lambda: server.stats.connections_open == 0)
        writer.close()


async def test_peer_not_reading_its_replies_stops_being_read() -> None:
    """Write-side flow control: replies a peer does not read pile up in the socket, then the
    server stops taking its frames instead of buffering replies without bound."""
    big = b"R" * (1024 * 1024)

    async def reply(payload: bytes, peer: Peer) -> bytes:
        return big

    async with serving(reply, max_in_flight=4) as server:
        reader, writer = await open_raw(server)
        sent = 60
        writer.write(b"".join(frame(b"m%d" % i) for i in range(sent)))
        await asyncio.sleep(1.0)
        taken = server.stats.frames_received
        assert taken < sent  # 60 MiB of replies cannot all be written to a peer not reading
        await asyncio.sleep(0.5)
        assert server.stats.frames_received == taken  # and reading stays stopped
        replies = await read_frames(reader, sent, timeout=30)
        assert len(replies) == sent and all(r == big for r in replies)
        assert server.stats.frames_received == sent
        writer.close()


async def test_two_hundred_concurrent_connections() -> None:
    clients = 200
    per_client = 5
    open_peak = 0

    def on_connection(opened: bool, peer: Peer) -> None:
        nonlocal open_peak
        open_peak = max(open_peak, server.stats.connections_open)

    async with serving(on_connection=on_connection) as server:
        all_connected = asyncio.Event()

        async def client(n: int) -> list[bytes]:
            reader, writer = await open_raw(server)
            await all_connected.wait()
            writer.write(b"".join(frame(b"c%d-%d" % (n, i)) for i in range(per_client)))
            replies = await read_frames(reader, per_client, timeout=20)
            writer.close()
            return replies

        tasks = [asyncio.create_task(client(n)) for n in range(clients)]
        # Nobody sends until the server holds all of them open at once.
        await wait_until(lambda: server.stats.connections_open == clients, timeout=20)
        all_connected.set()
        results = await asyncio.gather(*tasks)
        for n, replies in enumerate(results):
            assert replies == [b"ACK|c%d-%d" % (n, i) for i in range(per_client)]
        assert server.stats.connections_total == clients
        assert server.stats.frames_received == clients * per_client
        assert open_peak == clients


@pytest.mark.parametrize("seed", range(4))
async def test_random_bytes_then_a_valid_frame(seed: int) -> None:
    async def on_oversized(head: bytes, size: int, peer: Peer) -> bytes:
        return b"AR"

    async with serving(on_oversized=on_oversized, max_frame_bytes=4096) as server:
        reader, writer = await open_raw(server)
        noise = random.Random(seed).randbytes(50_000)
        writer.write(noise)
        writer.write(frame(b"MSH|valid"))
        decoder = FrameDecoder()
        async with asyncio.timeout(10):
            while True:
                data = await reader.read(65536)
                assert data, "server closed the connection"
                payloads = [e.payload for e in decoder.feed(data) if isinstance(e, Frame)]
                if b"ACK|MSH|valid" in payloads:
                    break
        writer.close()
        # Still serving new connections.
        reader2, writer2 = await open_raw(server)
        writer2.write(frame(b"again"))
        assert await read_frames(reader2, 1) == [b"ACK|again"]
        writer2.close()
    assert server.stats.junk_bytes > 0


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_handler_exception_closes_only_that_connection(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(payload: bytes, peer: Peer) -> Awaitable[bytes | None]:
        if payload == b"boom" and mode == "sync":
            raise RuntimeError("handler failure")

        async def reply() -> bytes:
            if payload == b"boom":
                raise RuntimeError("handler failure")
            return b"ACK|" + payload

        return reply()

    caplog.set_level(logging.INFO, logger="parcours.mllp")
    async with serving(handler) as server:
        reader, writer = await open_raw(server)
        writer.write(frame(b"one") + frame(b"boom") + frame(b"two"))
        # The reply owed before the failure is written; then the connection closes.
        assert await read_frames(reader) == [b"ACK|one"]
        writer.close()
        reader2, writer2 = await open_raw(server)
        writer2.write(frame(b"three"))
        assert await read_frames(reader2, 1) == [b"ACK|three"]
        writer2.close()
    assert server.stats.handler_errors == 1
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failures and failures[0].exc_info is not None
    assert failures[0].connection_id == 1  # type: ignore[attr-defined]


async def test_logs_carry_no_message_content(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="parcours.mllp")
    secret = b"PID|1||DUPONT^JEANNE"

    async def on_oversized(head: bytes, size: int, peer: Peer) -> bytes:
        return b"AR"

    async with serving(on_oversized=on_oversized, max_frame_bytes=64) as server:
        reader, writer = await open_raw(server)
        writer.write(secret + frame(secret) + frame(secret * 10) + b"\x0b" + secret)
        writer.write(frame(secret))
        assert len(await read_frames(reader, 4)) == 4
        writer.close()
    assert caplog.records  # junk, oversized and truncated were all logged
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert "DUPONT" not in text


async def test_close_lets_in_flight_replies_finish() -> None:
    handler, calls = future_handler()
    async with serving(handler) as server:
        reader, writer = await open_raw(server)
        writer.write(frame(b"late"))
        await wait_until(lambda: len(calls) == 1)
        closing = asyncio.create_task(server.close(grace=5.0))
        await asyncio.sleep(0.1)
        calls[0][1].set_result(b"ACK|late")
        assert await read_frames(reader) == [b"ACK|late"]  # reply, then EOF
        await closing
        assert server.stats.connections_open == 0
        writer.close()


async def test_close_gives_up_after_grace() -> None:
    handler, calls = future_handler()
    server = MLLPServer(handler, host="127.0.0.1", port=0)
    await server.start()
    reader, writer = await open_raw(server)
    writer.write(frame(b"never"))
    await wait_until(lambda: len(calls) == 1)
    async with asyncio.timeout(5):
        await server.close(grace=0.2)
        assert await read_frames(reader) == []
    assert not calls[0][1].cancelled()  # the engine's own work is not cancelled by us
    writer.close()


async def test_connection_callback_and_counters() -> None:
    events: list[tuple[bool, int]] = []
    async with serving(on_connection=lambda opened, peer: events.append(
        (opened, peer.connection_id)
    )) as server:
        for _ in range(2):
            reader, writer = await open_raw(server)
            writer.write(b"junk" + frame(b"x"))
            assert await read_frames(reader, 1) == [b"ACK|x"]
            writer.close()
            await wait_until(lambda: server.stats.connections_open == 0)
    assert events == [(True, 1), (False, 1), (True, 2), (False, 2)]
    assert server.stats.connections_total == 2
    assert server.stats.junk_bytes == 8


# --- sender -------------------------------------------------------------------------------


async def test_client_send_and_pipelined_send_many() -> None:
    handler, calls = future_handler()

    async def resolver() -> None:
        done = 0
        while True:
            await wait_until(lambda d=done: len(calls) > d)
            for payload, fut in reversed(calls[done:]):
                fut.set_result(b"ACK|" + payload)
            done = len(calls)

    task = asyncio.create_task(resolver())
    try:
        async with serving(handler) as server, MLLPClient("127.0.0.1", server.port) as client:
            assert await client.send(b"first") == b"ACK|first"
            payloads = [b"p%d" % i for i in range(50)]
            replies = await client.send_many(payloads, window=8)
            assert replies == [b"ACK|" + p for p in payloads]
            assert server.stats.connections_total == 1
    finally:
        task.cancel()


async def test_client_reconnects_after_server_closed_the_connection() -> None:
    async with serving(idle_timeout=1.0) as server:
        client = MLLPClient("127.0.0.1", server.port)
        assert await client.send(b"a") == b"ACK|a"
        # Closed by the server's idle timeout, and the close seen by the client (its EOF is
        # read in a later turn of the loop than the server's counter changes).
        await wait_until(lambda: server.stats.connections_open == 0 and not client.connected)
        assert await client.send(b"b") == b"ACK|b"
        assert client.connections_opened == 2
        assert server.stats.connections_total == 2
        await client.close()


async def test_client_reconnects_lazily_after_a_failure() -> None:
    def handler(payload: bytes, peer: Peer) -> Awaitable[bytes | None]:
        if payload == b"drop":
            raise RuntimeError("handler failure")
        return ack(payload, peer)

    async with serving(handler) as server:
        client = MLLPClient("127.0.0.1", server.port)
        with pytest.raises(MLLPConnectionError):
            await client.send(b"drop")
        assert not client.connected
        assert await client.send(b"ok") == b"ACK|ok"
        assert client.connections_opened == 2
        await client.close()


async def test_client_ack_timeout() -> None:
    async def handler(payload: bytes, peer: Peer) -> bytes | None:
        return None if payload == b"silent" else b"ACK|" + payload

    async with serving(handler) as server:
        client = MLLPClient("127.0.0.1", server.port, ack_timeout=0.3)
        with pytest.raises(MLLPTimeout):
            await client.send(b"silent")
        # The connection is dropped (a late reply would be mismatched) and reopened.
        assert await client.send(b"next") == b"ACK|next"
        assert client.connections_opened == 2
        await client.close()


async def test_client_send_no_reply() -> None:
    received: list[bytes] = []

    async def handler(payload: bytes, peer: Peer) -> None:
        received.append(payload)
        return None

    async with serving(handler) as server:
        async with MLLPClient("127.0.0.1", server.port) as client:
            await client.send_no_reply(b"one")
            await client.send_no_reply(b"two")
            await wait_until(lambda: len(received) == 2)
    assert received == [b"one", b"two"]


async def test_client_connection_refused() -> None:
    server = MLLPServer(ack, host="127.0.0.1", port=0)
    await server.start()
    port = server.port
    await server.close()
    client = MLLPClient("127.0.0.1", port, connect_timeout=2.0)
    with pytest.raises(MLLPConnectionError):
        await client.send(b"x")


async def test_client_close_interrupts_a_send_waiting_for_its_reply() -> None:
    handler, calls = future_handler()
    async with serving(handler) as server:
        client = MLLPClient("127.0.0.1", server.port, ack_timeout=30)
        sending = asyncio.create_task(client.send(b"pending"))
        await wait_until(lambda: len(calls) == 1)
        await client.close()
        async with asyncio.timeout(5):
            with pytest.raises(MLLPConnectionError):
                await sending
        calls[0][1].set_result(None)
