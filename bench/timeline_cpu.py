"""Timeline destination CPU per ORU (issue #12): where the `destination:timeline` stage goes.

    .venv/bin/python bench/timeline_cpu.py [--messages 3000] [--patients 1000] [--batch 100]
                                           [--store sqlite|postgresql] [--profile out.prof]

A micro-benchmark, in one process, with no MLLP and no router: it explains the timeline's
share of `bench/pipeline.py` row (b); it does not show the issue's goal met (design brief:
speed is measured on what a user runs). The messages are bench/harness.py's ORU^R01 (12 OBX),
message i for patient i % patients, turned into events envelopes by the shipped route's
`oru_events` transformer before the clock starts. They are then handed to the timeline
destination `--batch` at a time, in id order, as the partition runner hands them
(`TimelineDestination.send_batch`), on a fresh store (SQLite file in a temporary folder, or a
fresh PostgreSQL database). Three passes, each timed with time.process_time (every thread of
this process: the apply runs in a worker thread) and the destination's own `cpu_seconds` (the
thread CPU the engine reports as `parcours_stage_cpu_seconds_total{stage="destination:timeline"}`):

1. first messages of each patient (patients created, identifiers linked);
2. the following messages (patients known: the steady state of a lab feed);
3. every message again, same generation (a redelivery: all skipped).

Each pass is checked afterwards (observations and events counted), so a faster wrong apply
cannot be reported.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import load_average, machine, oru, pg_database  # noqa: E402


def envelopes(n: int, patients: int, same_order: bool) -> list[tuple[int, str, bytes]]:
    """(message id, patient key, payload) of n ORU, as the router would have stored them.

    Each message has its own order numbers (ORC-2/3, OBR-2/3: one lab request per message), so
    its own result event; `same_order` keeps harness.oru's fixed numbers, as bench/pipeline.py
    sends them: every message then corrects the one result event its predecessor wrote."""
    import json

    from engine.routing.router import exchange_from_bytes
    from transformers.builtin import BUILTIN

    out = []
    for i in range(n):
        raw = oru(f"TL{i:08d}", i % patients)
        if not same_order:
            raw = raw.replace(b"26112500042", f"2{i:010d}".encode()).replace(
                b"CMD-20261125-0042", f"CMD-{i:012d}".encode())
        ex = exchange_from_bytes(raw, "main")
        ex.message_id = i + 1
        done = BUILTIN["oru_events"](ex)
        assert done is not None
        out.append((i + 1, f"LAB{i % patients:07d}", json.dumps(done.body).encode()))
    return out


def items(batch: list[tuple[int, str, bytes]]) -> list[Any]:
    from channels.outbound.base import OutboundItem

    return [OutboundItem(delivery_id=mid, message_id=mid, route="lab-timeline",
                         destination="timeline", payload=payload,
                         content_type="application/vnd.parcours.events+json",
                         patient_key=key, attempt=1, idempotency_key=f"{mid}:timeline:0",
                         headers={"message_type": "ORU", "trigger_event": "R01",
                                  "generation": 0})
            for mid, key, payload in batch]


@contextmanager
def store_url(kind: str) -> Iterator[str]:
    if kind == "postgresql":
        with pg_database() as url:
            yield url
    else:
        with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'parcours.db'}"


def run_pass(dest: Any, msgs: list[tuple[int, str, bytes]], size: int,
             prof: cProfile.Profile | None) -> tuple[float, float, list[str]]:
    """(process CPU s, destination thread CPU s, outcome kinds) of applying msgs."""
    kinds: list[str] = []
    stage0 = dest.cpu_seconds
    cpu0 = time.process_time()
    for at in range(0, len(msgs), size):
        outs = asyncio.run(profiled(dest.send_batch, prof)(items(msgs[at:at + size])))
        kinds += [o.kind if o is not None else "waiting" for o in outs]
    cpu = time.process_time() - cpu0
    return cpu, dest.cpu_seconds - stage0, kinds


def profiled(fn: Any, prof: cProfile.Profile | None) -> Any:
    """cProfile sees only the thread that enables it: the apply's worker thread is profiled
    by wrapping the timeline's apply_many, the event loop's side by wrapping send_batch."""
    if prof is None:
        return fn

    async def run(*args: Any) -> Any:
        prof.enable()
        try:
            return await fn(*args)
        finally:
            prof.disable()
    return run


def profile_thread(timeline: Any, prof: cProfile.Profile) -> None:
    inner = timeline.apply_many

    def apply_many(*args: Any) -> Any:
        prof.enable()
        try:
            return inner(*args)
        finally:
            prof.disable()
    timeline.apply_many = apply_many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100, help="deliveries per send_batch "
                    "(the runner's default batch_size)")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--same-order", action="store_true", help="bench/pipeline.py's messages: "
                    "one order number for all, so each message updates the same result event")
    ap.add_argument("--profile", help="write a cProfile of the timed passes to this file")
    args = ap.parse_args()

    from sqlalchemy import func, select

    from engine.store.database import Store
    from engine.timeline import Timeline, TimelineSettings
    from engine.timeline.destination import TimelineDestination
    from engine.timeline.models import observations, timeline_events

    msgs = envelopes(args.messages, args.patients, args.same_order)
    first, rest = msgs[:args.patients], msgs[args.patients:]
    prof = cProfile.Profile(time.thread_time) if args.profile else None  # CPU, not waits
    print(f"# timeline destination CPU per ORU (12 OBX), {args.store}, "
          f"{args.messages} messages / {args.patients} patients, batch {args.batch}"
          f"{', one order number (as bench/pipeline.py)' if args.same_order else ''}")
    print(f"# {machine()}; load average before: {load_average()}")
    with ExitStack() as stack:
        url = stack.enter_context(store_url(args.store))
        store = Store(url)
        stack.callback(store.close)
        store.migrate()
        dest = TimelineDestination("timeline", {}, Timeline(store.engine, TimelineSettings()))
        if prof:
            profile_thread(dest.timeline, prof)
        rows = []
        for name, part in (("first message of each patient", first),
                           ("patients known (steady state)", rest),
                           ("redelivery (all skipped)", msgs)):
            if not part:
                continue
            cpu, stage, kinds = run_pass(dest, part, args.batch, prof)
            bad = [k for k in kinds if k != "delivered"]
            if bad:
                raise SystemExit(f"{name}: {len(bad)} deliveries not delivered: {set(bad)}")
            rows.append((name, len(part), cpu, stage))
        with store.engine.connect() as conn:
            n_obs = conn.execute(select(func.count()).select_from(observations)).scalar()
            n_ev = conn.execute(select(func.count()).select_from(timeline_events)).scalar()
        events = 1 if args.same_order else args.messages
        if n_obs != 12 * events or n_ev != events:
            raise SystemExit(f"wrong result: {n_ev} events, {n_obs} observations for "
                             f"{args.messages} messages")
    print(f"{'pass':<34} {'msgs':>6} {'process CPU µs/ORU':>19} {'stage CPU µs/ORU':>17}")
    for name, n, cpu, stage in rows:
        print(f"{name:<34} {n:>6} {cpu / n * 1e6:>19.0f} {stage / n * 1e6:>17.0f}")
    print(f"# load average after: {load_average()}")
    if prof:
        prof.dump_stats(args.profile)
        print(f"# profile written to {args.profile}")


if __name__ == "__main__":
    main()
