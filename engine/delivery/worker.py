"""The worker process: routing and delivery away from the listener's interpreter.

Why a process: the router's transformers, the timeline and the destinations are CPU work in
Python; in the listener's process they hold the GIL that the event loop and the group commit
need to answer every ACK, so intake slowed down as soon as routing ran (docs/benchmarks.md).
`parcours serve` on the embedded default therefore runs two processes: the intake process
(listeners, folder channels, group commit, HTTP API) and one worker (`parcours work`: router,
delivery runner, sweeper) — the same `Engine` with other parts started, which is also what the
scaled mode's processes are. They share nothing but the store (SQLite: WAL, one writer at a
time, SQLite's own file locking between the two processes) and two pipes:

- intake → worker (the worker's stdin), one word a line: `wake` after each group commit (new
  messages to route), `notify P` (an operator put deliveries of partition P back in line),
  `reload` (routes.yaml was reloaded). End of file: the intake process is gone; the worker
  stops. The worker also dies with it on a SIGKILL (Linux parent-death signal), so a killed
  engine is a killed engine, as with one process.
- worker → intake (the worker's stdout), JSON a line: `stats` (delivery counters and
  normalisation counts, for /metrics and the dashboard) and `app_acks` (enhanced-mode
  application ACKs, which only the intake process can push on the sender's connection).

The store stays the truth: a lost line only delays work until the worker's sweeper or its
router's next poll finds it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("parcours.worker")

PR_SET_PDEATHSIG = 1


def _child_setup(nice: int) -> Callable[[], None]:
    def setup() -> None:
        """Runs in the child before exec: SIGKILL it when the intake process dies, and give
        the listener the CPU first (a lower priority only matters when both want a core)."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # not Linux: the worker still stops when its stdin closes
        if nice:
            try:
                os.nice(nice)
            except OSError:
                pass  # the worker runs, at the same priority

    return setup


def encode_app_acks(requests: list[dict[str, Any]]) -> str:
    return json.dumps({"app_acks": [
        {**r, "raw": base64.b64encode(r["raw"]).decode("ascii")} for r in requests]})


def decode_app_acks(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "raw": base64.b64decode(r["raw"])} for r in data]


# A stats line carries the worker's cumulative delivery histograms (tens of KiB with many
# destinations): above asyncio's default line limit.
STATS_LINE_LIMIT = 4 * 1024 * 1024


def resident_mib() -> float:
    """This process's resident memory now (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def recycle_line(rss_mib: float, limit_mib: int) -> str:
    return json.dumps({"recycle": {"rss_mib": round(rss_mib), "limit_mib": limit_mib}})


class WorkerLink:
    """The intake process's side: starts the worker, keeps it running, talks to it.

    It stands where the bus stands in a single process (`notify`), so the HTTP API and the
    operator pages need not know routing runs elsewhere.
    """

    is_memory = True

    def __init__(self, argv: list[str], env: dict[str, str],
                 on_stats: Callable[[dict[str, Any]], None],
                 on_app_acks: Callable[[list[dict[str, Any]]], Any], *,
                 nice: int = 0) -> None:
        self.argv = argv
        self.nice = nice
        self.env = env
        self._on_stats = on_stats
        self._on_app_acks = on_app_acks
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.connected = False
        self.restarts = 0
        # Replacements asked for by the worker itself (above PARCOURS_WORKER_MAX_RSS_MB),
        # not counted as restarts: nothing failed.
        self.recycles = 0
        self._recycling = False
        self.published = 0
        self.consumed = 0
        self.publish_failures = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task = loop.create_task(self._supervise(), name="worker-link")

    async def _supervise(self) -> None:
        while not self._stopping:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                preexec_fn=_child_setup(self.nice), limit=STATS_LINE_LIMIT)
            self.connected = True
            log.info("worker started", extra={"pid": self._proc.pid})
            self._send("wake")  # whatever the store holds already
            await self._read(self._proc)
            code = await self._proc.wait()
            self.connected = False
            if self._stopping:
                return
            if self._recycling and code == 0:
                self._recycling = False
                self.recycles += 1
                log.info("worker replaced after reaching its memory limit",
                         extra={"recycles": self.recycles})
                continue
            self._recycling = False
            self.restarts += 1
            log.error("worker exited; starting another", extra={"code": code})
            await asyncio.sleep(1.0)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue  # an over-long line: skip it, the next stats line will do
            if not line:
                return
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "stats" in msg:
                self._on_stats(msg["stats"])
            if "recycle" in msg:
                self._recycling = True
            if msg.get("app_acks"):
                try:
                    await self._on_app_acks(decode_app_acks(msg["app_acks"]))
                except Exception:
                    log.exception("application ACKs from the worker failed")

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        try:
            proc.stdin.write(line.encode("ascii") + b"\n")
            self.published += 1
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            self.publish_failures += 1

    def wake(self) -> None:
        """Thread-safe: new messages are durable."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._send, "wake")

    def notify(self, partition: int) -> None:
        """Thread-safe: partition `partition` has work (an operator's retry)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._send, f"notify {int(partition)}")

    def reload(self) -> None:
        self._send("reload")

    async def aclose(self, timeout: float = 30.0) -> None:
        """Let the worker finish and record what it has in flight, then reap it."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.error("worker did not stop; killing it", extra={"pid": proc.pid})
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def stop(self, timeout: float = 10.0) -> None:
        """The bus interface's stop (called from a thread); `aclose` does the work."""

    @property
    def consuming(self) -> frozenset[int]:
        return frozenset()

    async def set_partitions(self, partitions: set[int]) -> None:
        """The intake process owns no partition."""


class IntakeLink:
    """The worker's side: reads the intake process's words, writes stats and ACK requests."""

    def __init__(self, on_wake: Callable[[], None], on_notify: Callable[[int], None],
                 on_reload: Callable[[], Any], on_gone: Callable[[], None]) -> None:
        self._on_wake = on_wake
        self._on_notify = on_notify
        self._on_reload = on_reload
        self._on_gone = on_gone
        self._buffer = b""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        os.set_blocking(sys.stdin.fileno(), False)
        loop.add_reader(sys.stdin.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(sys.stdin.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            self._on_gone()
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        woke = False
        for raw in lines:
            word, _, arg = raw.decode("ascii", "replace").strip().partition(" ")
            if word == "wake":
                woke = True
            elif word == "notify" and arg.isdigit():
                self._on_notify(int(arg))
            elif word == "reload":
                asyncio.ensure_future(self._on_reload())
        if woke:
            self._on_wake()

    @staticmethod
    def write(payload: str) -> None:
        """One JSON line to the intake process (blocking writes are short: it reads all)."""
        try:
            sys.stdout.write(payload + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass
