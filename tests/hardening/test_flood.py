"""A running engine (`parcours serve`, its own process) under a connection flood and a memory
flood, on real sockets: the other senders, /healthz and the engine's memory stay fine.

No wall-clock assertion beyond a client's generous timeout: "gets its ACK" means within the
sender's ack timeout; memory is the engine process's RSS (psutil), in bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, func, select

from connectors.mllp.client import MLLPClient
from connectors.mllp.errors import MLLPConnectionError
from engine.store.models import messages
from tests.intake.test_ack_rules import msg
from tests.intake.test_crash import EngineProcess
from transformers.hl7.ack import read_ack

IDLE = 5000
TRICKLE = 200
MIB = 1024 * 1024


def raise_own_fd_limit(needed: int) -> None:
    """This test process holds the client ends of every connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the open-file hard limit ({hard}) is below {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


def engine_with(tmp_path: Path, channel: str, limits: str = "") -> EngineProcess:
    eng = EngineProcess(tmp_path)
    eng.routes.write_text(
        "version: 1\n" + limits + "channels:\n  main:\n    type: mllp\n    host: 127.0.0.1\n"
        f"    port: {eng.mllp_port}\n{channel}destinations: {{}}\nroutes: []\n")
    eng.start()
    return eng


async def open_many(port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    out: list[Any] = []
    for start in range(0, n, 250):  # under the listen backlog
        out += await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port)
                                      for _ in range(start, min(n, start + 250))))
    return out


async def test_ack_and_healthz_while_5000_idle_and_200_trickle(tmp_path: Path) -> None:
    raise_own_fd_limit(2 * (IDLE + TRICKLE) + 512)
    eng = engine_with(tmp_path, "    max_connections: 8000\n    max_connections_per_peer: 8000\n"
                                "    frame_timeout: 5\n    idle_timeout: 600\n",
                      limits="limits: {max_connections: 8000}\n")
    conns: list[Any] = []
    try:
        conns = await open_many(eng.mllp_port, IDLE)
        trickle = await open_many(eng.mllp_port, TRICKLE)
        conns += trickle
        stop = asyncio.Event()

        async def drip(w: asyncio.StreamWriter) -> None:
            w.write(b"\x0b" + msg("SLOW").encode()[:40])
            with contextlib.suppress(ConnectionError):
                while not stop.is_set() and not w.is_closing():
                    w.write(b"x")
                    await asyncio.sleep(0.5)

        drips = [asyncio.ensure_future(drip(w)) for _, w in trickle]
        await asyncio.sleep(1.0)
        proc = psutil.Process(eng.pid)
        assert proc.num_fds() > IDLE  # the engine does hold them all

        async with MLLPClient("127.0.0.1", eng.mllp_port, ack_timeout=10.0) as sender:
            for i in range(5):
                code = read_ack(await sender.send(msg(f"OK-{i}").encode()))[0]
                assert code == "AA"
        async with httpx.AsyncClient(timeout=10.0) as http:
            r = await http.get(f"http://127.0.0.1:{eng.http_port}/healthz")
            assert r.status_code == 200

        # The frame timeout (5 s) ends every trickling frame, however regularly its bytes
        # kept coming: its head is stored, answered AR, and the connection closed. A peer
        # that keeps writing into a closed socket gets a reset, which may overtake the AR.
        async def closed(reader: asyncio.StreamReader) -> bytes:
            async with asyncio.timeout(60):
                try:
                    return await reader.read()
                except ConnectionResetError:
                    return b"(reset)"

        replies = await asyncio.gather(*(closed(r) for r, _ in trickle))
        stop.set()
        await asyncio.gather(*drips, return_exceptions=True)
        assert all(b"MSA|AR" in r or r == b"(reset)" for r in replies), replies[:3]
        with create_engine(eng.store_url).connect() as db:
            cut = db.execute(select(func.count()).select_from(messages).where(
                messages.c.status == "rejected", messages.c.truncated == 1,
                messages.c.error.like("%frame_timeout%"))).scalar()
        assert cut == TRICKLE
        assert eng.proc is not None and eng.proc.poll() is None
        log = eng.log.read_text(errors="replace")
        assert "Traceback" not in log
        # Rate-limited: one line a second per reason, not one per connection.
        assert log.count("frame not complete") < TRICKLE / 4
    finally:
        for _, w in conns:
            w.transport.abort()
        eng.stop()


async def test_a_flood_past_the_process_limit_is_refused_and_the_rest_keeps_working(
        tmp_path: Path) -> None:
    raise_own_fd_limit(2 * 3000 + 512)
    eng = engine_with(tmp_path, "    max_connections_per_peer: null\n    max_connections: null\n",
                      limits="limits: {max_connections: 1000}\n")
    conns: list[Any] = []
    try:
        conns = await open_many(eng.mllp_port, 3000)
        await asyncio.sleep(1.0)
        proc = psutil.Process(eng.pid)
        assert proc.num_fds() < 1000 + 256  # never more than the limit plus the rest
        async with httpx.AsyncClient(timeout=10.0) as http:
            r = await http.get(f"http://127.0.0.1:{eng.http_port}/healthz")
            assert r.status_code == 200
        # Refused while the idle ones hold every place: the sender sees a closed connection.
        with pytest.raises((MLLPConnectionError, ConnectionError, TimeoutError)):
            async with MLLPClient("127.0.0.1", eng.mllp_port, ack_timeout=5.0,
                                  connect_timeout=5.0) as sender:
                await sender.send(msg("REFUSED").encode())
        for _, w in conns[:100]:
            w.transport.abort()
        await asyncio.sleep(0.5)
        async with MLLPClient("127.0.0.1", eng.mllp_port, ack_timeout=10.0) as sender:
            assert read_ack(await sender.send(msg("AFTER").encode()))[0] == "AA"
        log = eng.log.read_text(errors="replace")
        assert "connection refused: max_connections_total" in log
        assert "Traceback" not in log
        assert log.count("connection refused") < 30
    finally:
        for _, w in conns:
            w.transport.abort()
        eng.stop()


async def test_40_unfinished_15_mib_frames_keep_rss_growth_under_100_mb(tmp_path: Path) -> None:
    eng = engine_with(tmp_path, "")
    conns: list[Any] = []
    try:
        proc = psutil.Process(eng.pid)
        async with MLLPClient("127.0.0.1", eng.mllp_port, ack_timeout=10.0) as warm:
            assert read_ack(await warm.send(msg("WARM").encode()))[0] == "AA"
        await asyncio.sleep(0.5)
        before = proc.memory_info().rss
        conns = await open_many(eng.mllp_port, 40)
        head = b"\x0b" + msg("BIG").encode()
        chunk = b"x" * MIB
        peak = before

        async def fill(w: asyncio.StreamWriter) -> None:
            w.write(head)
            for _ in range(15):
                w.write(chunk)
                await w.drain()

        async def watch(done: asyncio.Event) -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, proc.memory_info().rss)
                await asyncio.sleep(0.05)

        done = asyncio.Event()
        watcher = asyncio.ensure_future(watch(done))
        await asyncio.gather(*(fill(w) for _, w in conns))
        await asyncio.sleep(2.0)  # let the engine read what the kernel still buffers
        done.set()
        await watcher
        peak = max(peak, proc.memory_info().rss)
        growth = peak - before
        assert growth < 100 * MIB, f"RSS grew by {growth / MIB:.1f} MiB"

        # Every frame ends and gets an answer: AA for those kept whole (within the budget),
        # AR for those cut to their head.
        for _, w in conns:
            w.write(b"\x1c\r")

        async def answer(reader: asyncio.StreamReader) -> str:
            async with asyncio.timeout(120):
                data = await reader.readuntil(b"\x1c\r")
            return read_ack(data[1:-2])[0]

        codes = await asyncio.gather(*(answer(r) for r, _ in conns))
        assert set(codes) <= {"AA", "AR"} and codes.count("AR") >= 40 - 64 // 15
        print(f"RSS growth {growth / MIB:.1f} MiB for 40 x 15 MiB unfinished frames; "
              f"{codes.count('AA')} kept whole, {codes.count('AR')} cut")
    finally:
        for _, w in conns:
            w.transport.abort()
        eng.stop()
