"""Crash safety (issue #2): an ACK means durable, whatever moment the engine dies at.

The engine runs as a real subprocess on a real store. 5,000 distinct messages are streamed
over 8 pipelined connections; the engine gets SIGKILL once a seeded random number of AAs has
come back (so the kill always lands mid-stream, with many messages in flight between the
socket, the group committer and the database). It is restarted on the same store, everything
that was not acknowledged is sent again, and the store is then read directly:

- every control id is in `messages` exactly once as a non-duplicate row, accepted (AA);
- every ACKed control id has exactly one row (it was never resent) — so no ACK was a lie;
- an unacknowledged id may also have one 'duplicate' row: committed before the kill but its
  ACK lost with the process, then recognised on resend (duplicate_of points at the original);
- raw bytes are those sent.

Set PARCOURS_CRASH_SEED to replay a run; the seed and the kill point are printed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from connectors.mllp.framing import Frame, FrameDecoder, frame
from engine.store.models import messages
from tests.conftest import ROOT
from tests.intake.test_ack_rules import msg
from transformers.hl7.ack import read_ack

# `make soak` (PARCOURS_SOAK=1) streams ten times more before and after the kill.
TOTAL = 50_000 if os.environ.get("PARCOURS_SOAK") else 5000
CONNECTIONS = 8
WINDOW = 16  # unanswered messages per connection: many in flight when the kill lands


# -- a Parcours engine in its own process -------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mllp_routes(port: int, **channel: object) -> str:
    extra = "".join(f"    {k}: {v}\n" for k, v in channel.items())
    return (
        "version: 1\nchannels:\n  main:\n    type: mllp\n    host: 127.0.0.1\n"
        f"    port: {port}\n{extra}destinations: {{}}\nroutes: []\n"
    )


class EngineProcess:
    """`parcours serve` as a subprocess with its own home, ports, routes file and log."""

    def __init__(self, base: Path, store_url: str | None = None, **channel: object) -> None:
        self.home = base / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.store_url = store_url or f"sqlite:///{self.home / 'parcours.db'}"
        self.mllp_port = free_port()
        self.http_port = free_port()
        self.routes = base / "routes.yaml"
        self.routes.write_text(mllp_routes(self.mllp_port, **channel))
        self.log = base / "engine.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env: dict[str, str] = {}  # PARCOURS_* settings a test adds

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARCOURS_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        cmd = [
            sys.executable, "-c", "from engine.cli.main import main; main()", "serve",
            "--home", str(self.home), "--host", "127.0.0.1",
            "--mllp-port", str(self.mllp_port), "--http-port", str(self.http_port),
            "--store-url", self.store_url, "--routes", str(self.routes),
            "--log-level", "WARNING",
        ]
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start #{self.starts}\n".encode())
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited with {self.proc.returncode}:\n{self.tail()}")
            if self._mllp_up() and self._healthy():
                return
            time.sleep(0.05)
        raise AssertionError(f"engine not ready after {timeout} s:\n{self.tail()}")

    def _mllp_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.mllp_port), timeout=0.5):
                return True
        except OSError:
            return False

    def _healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.http_port}/healthz"
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a power cut for the process."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


# -- a pipelined MLLP load client ---------------------------------------------------------


async def pipeline(
    port: int,
    items: Iterable[tuple[str, bytes]],
    on_reply: Callable[[str, bytes], None],
    *,
    window: int = WINDOW,
) -> int:
    """Send (control id, payload) on one connection, up to `window` unanswered; replies come
    back in order (MLLP), each is matched to its message and handed to `on_reply`.

    Stops quietly when the connection breaks (the engine was killed); returns the number of
    replies received.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    slots = asyncio.Semaphore(window)
    sent: collections.deque[str] = collections.deque()
    done_sending = asyncio.Event()
    replies = 0

    async def send_all() -> None:
        try:
            for cid, payload in items:
                await slots.acquire()
                sent.append(cid)
                writer.write(frame(payload))
                await writer.drain()
        except (OSError, RuntimeError):
            pass
        finally:
            done_sending.set()

    async def read_all() -> None:
        nonlocal replies
        decoder = FrameDecoder()
        while True:
            if done_sending.is_set() and not sent:
                return
            try:
                data = await reader.read(65536)
            except OSError:
                return
            if not data:
                return
            for event in decoder.feed(data):
                assert isinstance(event, Frame), event
                cid = sent.popleft()
                replies += 1
                slots.release()
                on_reply(cid, event.payload)

    sender = asyncio.create_task(send_all())
    try:
        await read_all()
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return replies


def adt_messages(n: int, prefix: str = "CRASH") -> dict[str, bytes]:
    rng = random.Random(n)
    names = ["DUPONT^JEAN", "MARTIN^LEA", "DURAND^PAUL", "LEROY^ANNE", "MOREAU^LUC"]
    return {
        f"{prefix}{i:05d}": msg(f"{prefix}{i:05d}", name=rng.choice(names)).encode()
        for i in range(n)
    }


# After intake the router moves an accepted message on (routed, unrouted, done…): what intake
# decided is the ACK it stored, and that it is neither refused nor a resend.
NOT_ACCEPTED = {"error", "rejected", "duplicate"}


def is_accepted(row: dict[str, Any]) -> bool:
    return row["ack_code"] == "AA" and row["status"] not in NOT_ACCEPTED


def stored_rows(store_url: str) -> list[dict[str, Any]]:
    eng = create_engine(store_url)
    try:
        with eng.connect() as conn:
            cols = [messages.c[k] for k in ("id", "control_id", "status", "ack_code",
                                             "duplicate_of", "raw", "size", "truncated")]
            return [dict(r) for r in conn.execute(select(*cols).order_by(messages.c.id))
                    .mappings()]
    finally:
        eng.dispose()


# -- the test -----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def crash_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'crash.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkill_mid_stream_loses_no_acked_message(tmp_path: Path, crash_store: str) -> None:
    seed = int(os.environ.get("PARCOURS_CRASH_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    kill_after = rng.randrange(TOTAL // 10, TOTAL * 9 // 10)  # AAs received before SIGKILL
    print(f"crash seed={seed} kill after {kill_after} AAs (PARCOURS_CRASH_SEED={seed} replays)")

    sent = adt_messages(TOTAL)
    ids = list(sent)
    engine = EngineProcess(tmp_path, crash_store)
    engine.start()
    acked: set[str] = set()
    answers: collections.Counter[str] = collections.Counter()

    def on_reply(cid: str, ack: bytes) -> None:
        code, control_id, _ = read_ack(ack)
        assert control_id == cid  # replies in order, each for its own message
        answers[code] += 1
        if code == "AA":
            acked.add(cid)
        if len(acked) >= kill_after:
            engine.kill()  # from inside the receive loop: the very next reads see a dead peer

    try:
        slices = [ids[i::CONNECTIONS] for i in range(CONNECTIONS)]
        started = time.monotonic()
        await asyncio.gather(*(
            pipeline(engine.mllp_port, ((cid, sent[cid]) for cid in part), on_reply)
            for part in slices
        ))
        engine.kill()  # in case every message got through before the kill point
        rc = engine.wait()
        print(f"first run: {len(acked)} AA of {TOTAL} in {time.monotonic() - started:.1f} s, "
              f"exit {rc}, answers {dict(answers)}")
        assert rc == -signal.SIGKILL
        assert set(answers) <= {"AA"}, answers
        assert 0 < len(acked) < TOTAL, "the kill must land mid-stream"

        # Restart on the same store and resend what was not acknowledged, as a sender would.
        engine.start()
        unacked = [cid for cid in ids if cid not in acked]
        resent: dict[str, str] = {}

        def on_resend(cid: str, ack: bytes) -> None:
            code, control_id, _ = read_ack(ack)
            assert control_id == cid
            resent[cid] = code

        await asyncio.gather(*(
            pipeline(engine.mllp_port, ((cid, sent[cid]) for cid in unacked[i::CONNECTIONS]),
                     on_resend)
            for i in range(CONNECTIONS)
        ))
        assert len(resent) == len(unacked)
        assert set(resent.values()) == {"AA"}  # a resend gets the original ACK: AA
    finally:
        engine.stop()

    if crash_store.startswith("sqlite"):
        eng = create_engine(crash_store)
        with eng.connect() as conn:  # the WAL replay after SIGKILL left a sound database
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        eng.dispose()
    rows = stored_rows(crash_store)
    originals: dict[str, dict[str, Any]] = {}
    duplicates: collections.Counter[str] = collections.Counter()
    for r in rows:
        assert r["raw"] == sent[r["control_id"]]  # exactly the bytes sent
        assert r["size"] == len(r["raw"]) and r["truncated"] == 0
        if r["status"] == "duplicate":
            duplicates[r["control_id"]] += 1
            continue
        assert is_accepted(r), r
        assert r["control_id"] not in originals, f"{r['control_id']} stored twice"
        originals[r["control_id"]] = r
    for r in rows:
        if r["status"] == "duplicate":
            assert r["duplicate_of"] == originals[r["control_id"]]["id"]
    lost = sorted(acked - set(originals))
    assert not lost, f"{len(lost)} ACKed message(s) not in the store, e.g. {lost[:5]}"
    missing = sorted(set(ids) - set(originals))
    assert not missing, f"{len(missing)} message(s) missing after the resend: {missing[:5]}"
    assert not (set(duplicates) & acked)  # acked ones were never resent, so never duplicated
    assert all(n == 1 for n in duplicates.values())  # one resend at most, one duplicate row
    lost_acks = len(duplicates)
    print(f"{len(rows)} rows: {len(originals)} originals, {lost_acks} committed but unacked "
          f"(ACK lost in the kill, recognised as duplicates on resend)")
