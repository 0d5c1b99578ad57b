"""`parcours serve` on the embedded default: intake in one process, routing and delivery in its
worker (engine/delivery/worker.py). Checked from outside, as an operator sees it: the sender's ACKs
(commit and application), the files written, /metrics, a SIGHUP, a SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from pathlib import Path

import psutil

from connectors.mllp.framing import Frame, FrameDecoder, frame
from tests.intake.test_ack_rules import msg
from tests.intake.test_crash import EngineProcess
from tests.routing.test_delivery_e2e import routes
from transformers.hl7.ack import read_ack


def _serve(tmp_path: Path, out: Path, env: dict[str, str] | None = None) -> EngineProcess:
    proc = EngineProcess(tmp_path)
    proc.env.update(env or {})
    proc.routes.write_text(routes(out, port=proc.mllp_port))
    proc.start()
    return proc


def _wait(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {getattr(predicate, '__doc__', predicate)}")


def _metrics(proc: EngineProcess) -> str:
    url = f"http://127.0.0.1:{proc.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


async def _exchange(port: int, payloads: list[bytes], frames: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for p in payloads:
        writer.write(frame(p))
    while len(got) < frames:
        data = await asyncio.wait_for(reader.read(65536), 20)
        assert data, "connection closed"
        got += [e.payload for e in decoder.feed(data) if isinstance(e, Frame)]
    writer.close()
    return got


async def test_routing_runs_in_a_worker_and_the_sender_still_gets_its_acks(tmp_path: Path
                                                                          ) -> None:
    out = tmp_path / "out"
    proc = _serve(tmp_path, out)
    try:
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 1 and "work" in workers[0].cmdline()
        # The listener gets the CPU first; the worker's commits are fsynced once a second.
        assert workers[0].nice() == min(19, psutil.Process(proc.pid).nice() + 10)
        assert workers[0].environ()["PARCOURS_SQLITE_SYNCHRONOUS"] == "NORMAL"
        # Enhanced mode: the commit ACK from the intake process, then the application ACK,
        # decided by the worker after routing, pushed on the same connection.
        frames = await _exchange(proc.mllp_port, [
            msg(f"W-{i}").encode() for i in range(5)] + [
            msg("W-EN", accept="AL", app_ack="AL").encode()], frames=7)
        codes = [read_ack(f)[:2] for f in frames]
        assert codes[:5] == [("AA", f"W-{i}") for i in range(5)]
        assert codes[5:] == [("CA", "W-EN"), ("AA", "W-EN")]

        def written() -> bool:
            """six messages in files and six event summaries"""
            return (len(list(out.glob("*.hl7"))) == 6
                    and len(list((out / "json").glob("*.json"))) == 6)

        _wait(written)

        def counted() -> bool:
            """the worker's delivery counters on the intake process's /metrics"""
            text = _metrics(proc)
            return 'parcours_destination_delivered_total{destination="files"} 6.0' \
                in text
        _wait(counted, 10)
        # The worker's CPU by stage, beside the intake process's own.
        text = _metrics(proc)
        for stage in ("event-loop", "intake:group-commit", "worker:event-loop", "router",
                      "recorder", "destination:files"):
            assert f'parcours_stage_cpu_seconds_total{{stage="{stage}"}}' in text, stage
        # The worker's delivery latency histograms, observed where the deliveries happen.
        assert 'parcours_destination_end_to_end_latency_seconds_count{destination="files"} ' \
            '6.0' in text
        assert 'parcours_destination_send_duration_seconds_count{destination="files",' \
            'outcome="delivered"} 6.0' in text
        assert text.count("# TYPE parcours_destination_end_to_end_latency_seconds ") == 1
    finally:
        proc.stop()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)


async def test_sighup_reaches_the_worker(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    proc = _serve(tmp_path, out)
    try:
        await _exchange(proc.mllp_port, [msg("R-1").encode()], frames=1)
        _wait(lambda: len(list(out.glob("*.hl7"))) == 1)
        proc.routes.write_text(routes(elsewhere, port=proc.mllp_port))
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(1.0)  # both processes read the file again
        await _exchange(proc.mllp_port, [msg("R-2").encode()], frames=1)

        def moved() -> bool:
            """the second message written where the new routes say"""
            return len(list(elsewhere.glob("*.hl7"))) == 1

        _wait(moved)
        assert len(list(out.glob("*.hl7"))) == 1
    finally:
        proc.stop()


async def test_a_killed_engine_takes_its_worker_with_it(tmp_path: Path) -> None:
    proc = _serve(tmp_path, tmp_path / "out")
    worker = psutil.Process(proc.pid).children()[0]
    proc.kill()
    proc.wait()
    _wait(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, 5)
    # Restarted, the engine finds in the store what was left and starts a new worker.
    proc.start()
    try:
        assert len(psutil.Process(proc.pid).children()) == 1
        frames = await _exchange(proc.mllp_port, [msg("K-1").encode()], frames=1)
        assert read_ack(frames[0])[0] == "AA"
        _wait(lambda: len(list((tmp_path / "out").glob("*.hl7"))) == 1)
    finally:
        proc.stop()


async def test_a_worker_over_its_memory_limit_is_replaced_and_nothing_is_lost(
        tmp_path: Path) -> None:
    """PARCOURS_WORKER_MAX_RSS_MB: a worker that has done work and is above the limit (1 MiB
    here: always) finishes what it has in flight and exits; the intake process starts a
    fresh one at once. Every message is delivered exactly once across the replacements."""
    out = tmp_path / "out"
    proc = _serve(tmp_path, out, {"PARCOURS_WORKER_MAX_RSS_MB": "1"})
    try:
        first = psutil.Process(proc.pid).children()[0].pid
        for batch in range(3):
            frames = await _exchange(proc.mllp_port, [
                msg(f"M-{batch}-{i}").encode() for i in range(4)], frames=4)
            assert [read_ack(f)[0] for f in frames] == ["AA"] * 4

            def delivered(n: int = 4 * (batch + 1)) -> bool:
                """every message so far in a file, once"""
                return len(list(out.glob("*.hl7"))) == n

            _wait(delivered)

        def recycled() -> bool:
            """a recycle counted on /metrics, and no restart"""
            text = _metrics(proc)
            return "parcours_worker_recycles_total 0.0" not in text \
                and "parcours_worker_recycles_total" in text
        _wait(recycled, 20)
        text = _metrics(proc)
        assert "parcours_worker_restarts_total 0.0" in text
        _wait(lambda: bool(psutil.Process(proc.pid).children()), 10)
        assert psutil.Process(proc.pid).children()[0].pid != first
        assert "worker above its memory limit" in proc.log.read_text()
        assert len(list((out / "json").glob("*.json"))) == 12
        assert "worker exited; starting another" not in proc.log.read_text()
    finally:
        proc.stop()
