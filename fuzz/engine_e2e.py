"""End-to-end fuzz of a running engine: mutated frames over real MLLP sockets.

    python -m fuzz.engine_e2e --frames 20000            # starts its own engine (SQLite)
    python -m fuzz.engine_e2e --port 2575 --http-port 8080 --pid 1234   # one already running

Each case (`fuzz.mutate`) is written on its own connection; the engine must answer every
frame that owes an answer (complete, starts with MSH, not an ACK) with an ACK whose MSA-2 is
that frame's MSH-10, within `--answer-timeout`. Every `--check-every` cases `/healthz` must
answer 200, and the engine's RSS is sampled. The run fails on an unanswered frame, a failed
health check, or RSS growth (engine and worker processes together) beyond `--rss-limit-mb`
after the warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from connectors.mllp.framing import Frame, FrameDecoder, Oversized
from fuzz.mutate import Case, Mutator, owes_answer
from fuzz.seeds import ROOT, hl7_messages
from transformers.hl7.ack import read_ack
from transformers.hl7.header import HeaderError, read_header

MiB = 1024 * 1024


@dataclass
class Report:
    cases: int = 0
    owed: int = 0
    answered: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    unanswered: list[str] = field(default_factory=list)  # "kind #index: why", no content
    health_failures: int = 0
    rss_baseline: int = 0
    rss_peak: int = 0
    rss_last: int = 0
    seconds: float = 0.0

    @property
    def rss_growth_mb(self) -> float:
        return (self.rss_peak - self.rss_baseline) / MiB

    def lines(self) -> list[str]:
        return [
            f"cases {self.cases} in {self.seconds:.0f} s, frames owed an answer {self.owed}, "
            f"answered {self.answered}, unanswered {len(self.unanswered)}",
            "kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items())),
            f"/healthz failures {self.health_failures}",
            f"RSS baseline {self.rss_baseline / MiB:.1f} MiB, peak {self.rss_peak / MiB:.1f} MiB "
            f"(growth {self.rss_growth_mb:.1f} MiB), last {self.rss_last / MiB:.1f} MiB",
            *self.unanswered[:20],
        ]


def expected_control_ids(case: Case) -> Counter[str]:
    """MSH-10 of each frame of `case` that owes an answer, as the engine will read it."""
    decoder = FrameDecoder()
    ids: Counter[str] = Counter()
    for event in decoder.feed(case.wire) + decoder.close():
        if isinstance(event, Frame):
            payload = event.payload
        elif isinstance(event, Oversized):
            payload = event.head
        else:
            continue
        if not owes_answer(payload):
            continue
        try:
            ids[read_header(payload).control_id] += 1
        except HeaderError as exc:
            ids[exc.partial.control_id] += 1
    return ids


async def _one(host: str, port: int, case: Case, timeout: float) -> str | None:
    """Write one case; None when every owed answer came back, else why not."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(case.wire)
        await writer.drain()
        if not case.owed:
            return None
        want = expected_control_ids(case)
        got: Counter[str] = Counter()
        decoder = FrameDecoder()
        deadline = time.monotonic() + timeout
        # Frames that were not owed an answer may get one too: wait for the owed ones.
        while missing := want - got:
            left = deadline - time.monotonic()
            if left <= 0:
                return (f"{sum(missing.values())} of {case.owed} owed answers missing after "
                        f"{timeout} s ({sum(got.values())} answers came)")
            try:
                data = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                continue
            if not data:
                return (f"connection closed with {sum(missing.values())} of {case.owed} "
                        "owed answers missing")
            for event in decoder.feed(data):
                if isinstance(event, Frame):
                    try:
                        got[read_ack(event.payload)[1]] += 1
                    except ValueError:
                        return "an answer that is not an ACK"
        return None
    except OSError as exc:
        return f"socket error {type(exc).__name__}"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def _healthy(host: str, http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{http_port}/healthz", timeout=5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _rss(pid: int | None) -> int:
    """Resident memory of the engine and its children (`serve` routes in a worker process)."""
    if pid is None:
        return 0
    import psutil

    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


async def fuzz_engine(host: str, port: int, http_port: int, pid: int | None, *, frames: int,
                      seed: int = 0, warmup: int = 200, concurrency: int = 8,
                      answer_timeout: float = 15.0, check_every: int = 500,
                      time_limit: float | None = None) -> Report:
    """Run `frames` mutated cases (after `warmup` uncounted ones); see the module doc."""
    mutator = Mutator(hl7_messages(), seed)
    report = Report()
    queue: asyncio.Queue[tuple[int, Case] | None] = asyncio.Queue(maxsize=concurrency * 2)

    async def worker(measured: bool) -> None:
        while (item := await queue.get()) is not None:
            index, case = item
            why = await _one(host, port, case, answer_timeout)
            if measured:
                report.cases += 1
                report.kinds[case.kind] += 1
                report.owed += case.owed
                if why is None:
                    report.answered += case.owed
                else:
                    report.unanswered.append(f"{case.kind} #{index}: {why}")

    async def phase(count: int, measured: bool) -> None:
        workers = [asyncio.create_task(worker(measured)) for _ in range(concurrency)]
        started = time.monotonic()
        for index in range(count):
            if time_limit is not None and measured and time.monotonic() - started > time_limit:
                break
            await queue.put((index, mutator.case()))
            if measured and index % check_every == check_every - 1:
                if not await asyncio.to_thread(_healthy, host, http_port):
                    report.health_failures += 1
                report.rss_peak = max(report.rss_peak, _rss(pid))
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)

    await phase(warmup, measured=False)
    report.rss_baseline = report.rss_peak = _rss(pid)
    started = time.monotonic()
    await phase(frames, measured=True)
    report.seconds = time.monotonic() - started
    if not await asyncio.to_thread(_healthy, host, http_port):
        report.health_failures += 1
    report.rss_last = _rss(pid)
    report.rss_peak = max(report.rss_peak, report.rss_last)
    return report


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_engine(home: Path, routes: Path, store_url: str | None = None
                 ) -> tuple[subprocess.Popen[bytes], int, int]:
    """`parcours serve` on free loopback ports: (process, MLLP port, HTTP port)."""
    mllp, http = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARCOURS_")}
    cmd = [sys.executable, "-c", "from engine.cli.main import main; main()", "serve",
           "--home", str(home), "--host", "127.0.0.1", "--mllp-port", str(mllp),
           "--http-port", str(http),
           "--routes", str(routes), "--log-level", "WARNING"]
    if store_url:
        cmd += ["--store-url", store_url]
    log = (home / "engine.log").open("ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not _healthy("127.0.0.1", http):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"engine did not start; see {home / 'engine.log'}")
        time.sleep(0.2)
    return proc, mllp, http


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.engine_e2e", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, help="stop sending after this long")
    p.add_argument("--rss-limit-mb", type=float, default=64.0)
    p.add_argument("--answer-timeout", type=float, default=15.0)
    p.add_argument("--routes", default=str(ROOT / "routes.yaml"),
                   help="routes file of the engine started here [the shipped routes.yaml]")
    p.add_argument("--store-url", help="store of the engine started here [SQLite in a temp dir]")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="MLLP port of a running engine (none: start one)")
    p.add_argument("--http-port", type=int)
    p.add_argument("--pid", type=int, help="pid of the running engine, for its RSS")
    args = p.parse_args(argv)
    proc = None
    with tempfile.TemporaryDirectory(prefix="parcours-e2e-") as tmp:
        if args.port is None:
            proc, port, http = spawn_engine(Path(tmp), Path(args.routes), args.store_url)
            pid: int | None = proc.pid
        else:
            port, http, pid = args.port, args.http_port or 8080, args.pid
        try:
            report = asyncio.run(fuzz_engine(
                args.host, port, http, pid, frames=args.frames, seed=args.seed,
                concurrency=args.concurrency, answer_timeout=args.answer_timeout,
                time_limit=args.seconds))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    for line in report.lines():
        print(line)
    ok = (not report.unanswered and not report.health_failures
          and (pid is None or report.rss_growth_mb <= args.rss_limit_mb))
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
