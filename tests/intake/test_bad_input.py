"""Bad input over real sockets (issue #2): random bytes, truncated and oversized frames, silent
clients, 200 connections at once. Each case checks three things: the sender gets a clear
answer, the engine keeps serving (a valid frame afterwards is AA), and nothing that arrived is
lost (every frame is a row in `messages`, cut ones with truncated=1 and their real size).
Memory is measured on a subprocess engine, where RSS belongs to the engine alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import select

from connectors.mllp.client import MLLPClient
from connectors.mllp.framing import (
    END_BLOCK,
    START_BLOCK,
    Frame,
    FrameDecoder,
    Junk,
    frame,
)
from engine.store.models import messages
from tests.conftest import routes_text
from tests.intake.test_ack_rules import msg, segments
from tests.intake.test_crash import EngineProcess, is_accepted, stored_rows
from transformers.hl7.ack import read_ack

pytestmark = pytest.mark.timeout(120)

LIMIT = 64 * 1024  # max_frame_bytes of the test channel
CHANNEL = (
    "  main:\n    type: mllp\n    host: 127.0.0.1\n    port: 0\n"
    f"    max_frame_bytes: {LIMIT}\n    idle_timeout: 1\n"
)
MiB = 1024 * 1024


def rows(eng: Any) -> list[dict[str, Any]]:
    with eng.store.engine.connect() as conn:
        q = select(messages).order_by(messages.c.id)
        return [dict(r) for r in conn.execute(q).mappings()]


async def wait_rows(eng: Any, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """For frames whose answer nobody read: the commit may land just after the test looks."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(eng)
        if len(found) >= n or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


class Conn:
    """A raw MLLP connection: write any bytes, read reply frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.replies: list[bytes] = []

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            while not self.replies:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                for event in self.decoder.feed(data):
                    assert isinstance(event, Frame), event
                    self.replies.append(event.payload)
        return self.replies.pop(0)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def still_serving(eng: Any, cid: str) -> bytes:
    """A fresh connection with a valid message gets AA: the listener is up."""
    raw = msg(cid).encode()
    ack = await eng.send(raw)
    assert read_ack(ack)[:2] == ("AA", cid)
    return raw


@pytest.fixture
async def eng(make_engine: Any, store_url: str) -> Any:
    return await make_engine(routes_text(CHANNEL), store_url=store_url)


# -- random bytes --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_junk_before_a_frame_is_skipped_and_the_frame_acked(eng: Any, seed: int) -> None:
    rng = random.Random(seed)
    junk = bytes(b for b in rng.randbytes(32 * 1024) if b not in (0x0B, 0x1C))
    raw = msg(f"J-{seed}").encode()
    c = await Conn.open(eng.port())
    await c.write(junk + frame(raw))
    assert read_ack(await c.reply())[:2] == ("AA", f"J-{seed}")
    await c.close()
    stored = rows(eng)
    assert [r["raw"] for r in stored] == [raw]  # junk is not a message; the frame is intact


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_random_bytes_then_valid_frame_on_the_same_connection(eng: Any, seed: int) -> None:
    """Any bytes at all, start and end blocks included: every frame they happen to contain is
    stored and answered AR, and the valid frame that follows is AA."""
    rng = random.Random(seed)
    noise = rng.randbytes(256 * 1024)
    raw = msg(f"R-{seed}").encode()
    stream = noise + frame(raw)
    # What the engine must have seen: decode the same bytes with the same limit.
    expected = [e for e in FrameDecoder(LIMIT).feed(stream) if not isinstance(e, Junk)]
    assert isinstance(expected[-1], Frame) and expected[-1].payload == raw
    print(f"seed {seed}: {len(expected) - 1} frame(s) inside the noise")

    c = await Conn.open(eng.port())
    for i in range(0, len(stream), 4096):  # in pieces, as a network would deliver them
        await c.write(stream[i : i + 4096])
    answers = [read_ack(await c.reply()) for _ in expected]
    await c.close()
    assert answers[-1][:2] == ("AA", f"R-{seed}")
    assert {a[0] for a in answers[:-1]} <= {"AR"}
    stored = rows(eng)
    assert len(stored) == len(expected)  # nothing that arrived is lost
    for row, event in zip(stored, expected, strict=True):
        if isinstance(event, Frame):
            assert row["raw"] == event.payload and row["truncated"] == 0
        else:  # cut by a start block inside the noise
            assert row["truncated"] == 1 and row["size"] == event.size
    assert is_accepted(stored[-1])
    assert {r["status"] for r in stored[:-1]} <= {"rejected"}
    await still_serving(eng, f"after-{seed}")


# -- truncated frames ------------------------------------------------------------------------


async def test_truncated_frame_then_half_close_is_stored_and_answered_ar(eng: Any) -> None:
    raw = msg("CUT-1").encode()
    half = raw[: len(raw) // 2]
    c = await Conn.open(eng.port())
    await c.write(START_BLOCK + half)
    c.writer.write_eof()  # end of stream from our side; we still read the answer
    code, cid, _ = read_ack(ack := await c.reply())
    assert (code, cid) == ("AR", "CUT-1")  # MSH was in the half, so the AR is addressed
    assert segments(ack)["ERR"][3].startswith("207^")
    await c.close()
    [row] = rows(eng)
    assert row["raw"] == half and row["size"] == len(half) and row["truncated"] == 1
    assert row["status"] == "rejected" and "cut short" in row["error"]
    await still_serving(eng, "after-cut")


async def test_truncated_frame_then_close_is_stored(eng: Any) -> None:
    raw = msg("CUT-2").encode()
    half = raw[:40]  # not even the whole MSH
    c = await Conn.open(eng.port())
    await c.write(START_BLOCK + half)
    await c.close()  # hang up without reading anything
    [row] = await wait_rows(eng, 1)
    assert row["raw"] == half and row["size"] == 40 and row["truncated"] == 1
    assert row["status"] == "rejected"
    await still_serving(eng, "after-close")


async def test_truncated_then_new_start_block_on_the_same_connection(eng: Any) -> None:
    cut = msg("CUT-3").encode()
    cut = cut[: len(cut) * 2 // 3]
    whole = msg("NEXT-3").encode()
    c = await Conn.open(eng.port())
    await c.write(START_BLOCK + cut + frame(whole))
    first, second = read_ack(await c.reply()), read_ack(await c.reply())
    await c.close()
    assert first[:2] == ("AR", "CUT-3")
    assert second[:2] == ("AA", "NEXT-3")
    a, b = rows(eng)
    assert (a["raw"], a["truncated"], a["size"], a["status"]) == (cut, 1, len(cut), "rejected")
    assert (b["raw"], b["truncated"]) == (whole, 0) and is_accepted(b)


# -- oversized frames ------------------------------------------------------------------------


def big_message(cid: str, size: int) -> bytes:
    """A well-formed message of `size` bytes: header, then NTE comment lines."""
    head = msg(cid).encode()
    line = b"NTE|1||" + b"x" * 1000 + b"\r"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[:size]


async def test_oversized_frame_is_answered_ar_stored_and_the_next_frame_acked(eng: Any) -> None:
    size = 20 * MiB
    big = big_message("BIG-1", size)
    nxt = msg("AFTER-BIG").encode()
    c = await Conn.open(eng.port())
    await c.write(frame(big) + frame(nxt))
    ack = await c.reply(timeout=30)
    assert read_ack(ack)[:2] == ("AR", "BIG-1")
    err = segments(ack)["ERR"]
    assert err[3].startswith("207^") and str(size) in ack.decode()  # says what and how big
    assert read_ack(await c.reply())[:2] == ("AA", "AFTER-BIG")  # same connection, still good
    await c.close()
    a, b = rows(eng)
    assert a["truncated"] == 1 and a["size"] == size and a["status"] == "rejected"
    assert a["raw"] == big[:LIMIT]  # the head, so an operator sees who sent it
    assert a["control_id"] == "BIG-1"
    assert b["raw"] == nxt and is_accepted(b)


# -- silent clients --------------------------------------------------------------------------


async def test_silent_client_is_closed_after_idle_timeout_others_are_served(eng: Any) -> None:
    silent = await Conn.open(eng.port())
    partial = await Conn.open(eng.port())
    cut = msg("SILENT-CUT").encode()[:60]
    await partial.write(START_BLOCK + cut)  # starts a frame, then goes quiet
    opened = time.monotonic()
    sent: list[bytes] = []
    async with MLLPClient("127.0.0.1", eng.port()) as busy:
        for i in range(8):  # a busy sender keeps being served while the others idle
            raw = msg(f"BUSY-{i}").encode()
            assert read_ack(await busy.send(raw))[:2] == ("AA", f"BUSY-{i}")
            sent.append(raw)
            await asyncio.sleep(0.05)
    async with asyncio.timeout(5):
        assert await silent.reader.read(1024) == b""  # closed by the server, nothing sent
    closed_after = time.monotonic() - opened
    assert 0.5 <= closed_after < 4.0, closed_after
    # The quiet half frame is not lost: stored as truncated and answered before closing.
    async with asyncio.timeout(5):
        assert read_ack(await partial.reply())[0] == "AR"
        assert await partial.reader.read(1024) == b""
    await silent.close()
    await partial.close()
    stored = await wait_rows(eng, 9)
    assert [r["raw"] for r in stored if not r["truncated"]] == sent
    assert [(r["raw"], r["size"]) for r in stored if r["truncated"]] == [(cut, 60)]
    await still_serving(eng, "after-idle")


# -- many connections ------------------------------------------------------------------------


async def test_two_hundred_concurrent_connections_all_acked_and_stored(
    make_engine: Any, store_url: str
) -> None:
    # Not the 1 s idle timeout of the other tests: 200 senders and the engine share this
    # test's event loop, and on a loaded machine a sender can be a second late between two
    # messages; the listener would rightly close it as idle.
    eng = await make_engine(routes_text(CHANNEL.replace("idle_timeout: 1", "idle_timeout: 120")),
                            store_url=store_url)
    n_conn, per_conn = 200, 5
    clients = [MLLPClient("127.0.0.1", eng.port(), ack_timeout=60) for _ in range(n_conn)]
    await asyncio.gather(*(c.connect() for c in clients))  # all 200 open at the same time
    sent: dict[str, bytes] = {}

    async def run(k: int, client: MLLPClient) -> list[str]:
        codes = []
        for j in range(per_conn):
            cid = f"C{k:03d}-{j}"
            sent[cid] = raw = msg(cid, name=f"PATIENT{k}^X").encode()
            code, echoed, _ = read_ack(await client.send(raw))
            assert echoed == cid
            codes.append(code)
        return codes

    try:
        results = await asyncio.gather(*(run(k, c) for k, c in enumerate(clients)))
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    assert {code for codes in results for code in codes} == {"AA"}
    stored = rows(eng)
    assert len(stored) == n_conn * per_conn
    assert {r["control_id"]: r["raw"] for r in stored} == sent
    assert all(is_accepted(r) for r in stored)


# -- memory stays bounded (subprocess engine) ------------------------------------------------


class RSSSampler:
    """Peak resident memory of a process, sampled in a thread while the load runs."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def send_big(port: int, cid: str, size: int, *, end: bool = True) -> bytes | None:
    """Stream one big frame in 1 MiB writes (never built in memory here either)."""
    head = msg(cid).encode()
    chunk = (b"NTE|1||" + b"y" * 1000 + b"\r") * 1024
    assert START_BLOCK not in chunk and END_BLOCK not in chunk
    c = await Conn.open(port)
    await c.write(START_BLOCK + head)
    left = size - len(head)
    while left > 0:
        await c.write(chunk[:left])
        left -= len(chunk)
    if not end:  # a frame that never ends: the sender hangs up
        await c.close()
        return None
    await c.write(END_BLOCK + b"\r")
    ack = await c.reply(timeout=60)
    await c.close()
    return ack


@pytest.mark.timeout(240)
async def test_memory_stays_bounded_under_oversized_frames(tmp_path: Path) -> None:
    engine = EngineProcess(tmp_path, max_frame_bytes=LIMIT, idle_timeout=5)
    engine.start()
    try:
        port = engine.mllp_port
        # Warm up every path once (oversized, store, ACK), so the baseline includes them.
        assert read_ack(await send_big(port, "WARM", 2 * MiB))[0] == "AR"  # type: ignore[arg-type]
        async with MLLPClient("127.0.0.1", port) as c:
            assert read_ack(await c.send(msg("WARM-OK").encode()))[0] == "AA"
        await asyncio.sleep(0.2)
        baseline = psutil.Process(engine.pid).memory_info().rss
        size, count = 20 * MiB, 10  # 200 MiB of frames, two at a time
        with RSSSampler(engine.pid) as rss:
            for k in range(0, count, 2):
                acks = await asyncio.gather(
                    send_big(port, f"HUGE-{k}", size), send_big(port, f"HUGE-{k + 1}", size)
                )
                for j, ack in enumerate(acks):
                    assert ack is not None and read_ack(ack)[:2] == ("AR", f"HUGE-{k + j}")
            await send_big(port, "ENDLESS", 50 * MiB, end=False)  # cut by a hang-up
            async with MLLPClient("127.0.0.1", port) as c:  # the engine still serves
                assert read_ack(await c.send(msg("AFTER").encode()))[:2] == ("AA", "AFTER")
        growth = rss.peak - baseline
        print(f"RSS baseline {baseline / MiB:.1f} MiB, peak {rss.peak / MiB:.1f} MiB, "
              f"growth {growth / MiB:.1f} MiB for {(count * size + 50 * MiB) / MiB:.0f} MiB sent")
        assert growth < 64 * MiB
        deadline = time.monotonic() + 10  # the cut frame is committed after the hang-up
        while True:
            stored = {r["control_id"]: r for r in stored_rows(engine.store_url)}
            if "ENDLESS" in stored or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        engine.stop()
    for k in range(count):
        row = stored[f"HUGE-{k}"]
        assert row["truncated"] == 1 and row["size"] == size and len(row["raw"]) == LIMIT
    endless = stored["ENDLESS"]
    assert endless["truncated"] == 1 and endless["size"] == 50 * MiB
    assert is_accepted(stored["AFTER"])
    assert len(stored) == count + 4  # WARM, WARM-OK, the ten, ENDLESS, AFTER


# -- NUL characters ----------------------------------------------------------------------------


async def test_nul_in_header_or_patient_id_is_stored_and_spares_its_neighbours(
    eng: Any, store_url: str
) -> None:
    """A NUL byte in MSH-10, or \\X00\\ in PID-3 (it ends up in patient_key), must not stop
    the message from being stored, nor fail the messages that share its group commit."""
    bad = [msg("NUL\x00ID").encode(),
           msg("NUL-PID").replace("12345^", "123\\X00\\45^").encode()]
    good = {f"NEIGHBOUR-{i}": msg(f"NEIGHBOUR-{i}").encode() for i in range(16)}

    async def send(raw: bytes) -> tuple[str, str, str]:
        async with MLLPClient("127.0.0.1", eng.port()) as c:
            return read_ack(await c.send(raw))

    answers = await asyncio.gather(*(send(r) for r in [*bad, *good.values()]))
    stored = rows(eng)
    assert sorted(r["raw"] for r in stored) == sorted([*bad, *good.values()])  # nothing lost
    assert [a[0] for a in answers[len(bad):]] == ["AA"] * len(good)  # neighbours unharmed
