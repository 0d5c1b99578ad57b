"""A bounded end-to-end fuzz of a running engine (`fuzz/engine_e2e.py`), on both stores.

`parcours serve` runs as a subprocess with the shipped routes.yaml (routing, normalisation,
timeline and file destinations all on); mutated corpus frames go over real MLLP sockets.
Every frame that owes an answer gets its ACK, `/healthz` keeps answering, and the engine's
RSS after the warm-up stays within a bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fuzz.engine_e2e import fuzz_engine, spawn_engine
from tests.conftest import ROOT, corpus

FRAMES = 1500
# Growth over these 1,500 cases after the warm-up (serve + worker, SQLite): 35–54 MiB seen on
# 2026-12-02 (first-use imports and caches land in it), 151 MiB without engine/allocator.py's
# arena bound — the bound sits between, so the known growth fails it and noise does not.
RSS_BOUND_MB = 100


@pytest.mark.timeout(600)
async def test_mutated_frames_are_answered_and_memory_stays_bounded(
        store_url: str, tmp_path: Path) -> None:
    corpus("hl7v2")  # the seeds: fail in CI, skip elsewhere, when the corpus is missing
    proc, mllp, http = spawn_engine(tmp_path, ROOT / "routes.yaml", store_url)
    try:
        report = await fuzz_engine("127.0.0.1", mllp, http, proc.pid, frames=FRAMES, seed=7,
                                   warmup=300, concurrency=4)
    finally:
        proc.terminate()
        proc.wait(30)
    print("\n".join(report.lines()))
    assert report.cases == FRAMES
    assert report.owed > FRAMES // 3  # most cases do owe an answer: the check is not empty
    kinds: Any = report.kinds
    assert set(kinds) >= {"bit_flips", "truncation", "splice", "framing_bytes", "huge_field",
                          "bad_charset", "resend", "ack"}
    assert report.unanswered == []
    assert report.answered == report.owed
    assert report.health_failures == 0
    assert report.rss_growth_mb < RSS_BOUND_MB
