"""Router and transformers CPU per ORU (issue #12), in-process, by stage.

    .venv/bin/python bench/route_cpu.py [--messages 2000] [--patients 1000]
                                        [--store-url postgresql+psycopg://...] [--profile FILE]

What it drives: N ORU^R01 of 12 OBX (bench/harness.py's message, the one bench/pipeline.py
sends) stored `accepted` in a fresh store (SQLite by default, as `make run`), then the
shipped routes.yaml's router (`Router.route_batch`, batches of 200 as the engine does) and
the delivery runner on every partition with the shipped file destinations (archive,
lab-normalised, events). The timeline destination is another stage (engine/timeline,
measured in bench/pipeline.py); here it is a `discard` destination, so the recorder still
records the same four outcomes per message.

Stages (CPU seconds of the thread that does each, `time.thread_time`, per message):
router (reading, evaluating, planning, the outbox transaction, without the transformers),
each transformer, the outcome recorder thread, each file destination's batches, and the
rest of the delivery phase (event loop, outbox reads). Totals are `time.process_time` of
the phase. Nothing is timed while the messages are stored.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import load_average, oru  # noqa: E402  (bench/harness.py)
from harness import machine as machine_line  # noqa: E402

ROUTE_BATCH = 200  # engine/app.py's ROUTE_BATCH


def arrivals(n: int, patients: int, prefix: str) -> list[Any]:
    """Arrivals as intake stores them (header read, patient key from PID-3)."""
    from engine.store.database import Arrival
    from engine.store.models import MessageStatus
    from transformers.hl7.header import patient_key, read_header, resolve_charset

    out = []
    for i in range(n):
        raw = oru(f"{prefix}-{i}", i % patients)
        h = read_header(raw)
        codec = resolve_charset(h, None)
        text = raw.decode(codec)
        out.append(Arrival(
            channel="main", raw=raw, status=MessageStatus.ACCEPTED,
            sending_application=h.sending_application, sending_facility=h.sending_facility,
            message_type=h.message_type, trigger_event=h.trigger_event,
            structure=h.structure, control_id=h.control_id, version=h.version,
            processing_id=h.processing_id, charset=codec,
            patient_key=patient_key(text, h.encoding, codec),
            application_ack_type=h.application_ack_type or None))
    return out


def store_all(store: Any, items: list[Any]) -> None:
    for start in range(0, len(items), 500):
        store.save_arrivals(items[start:start + 500])


class Bench:
    def __init__(self, store_url: str | None, base: Path) -> None:
        from channels.outbound.factory import build_destination
        from channels.outbound.null import NullDestination
        from engine.config import load_file
        from engine.delivery.runner import DeliveryRunner
        from engine.routing.router import Router
        from engine.routing.transformers import Registry
        from engine.store.database import Store
        from transformers.lab.transformer import configure as configure_lab

        env = {**os.environ, "PARCOURS_HOME": str(base)}
        self.config = load_file(ROOT / "routes.yaml", env=env)
        self.store = Store(store_url or f"sqlite:///{base / 'parcours.db'}")
        self.store.migrate()
        configure_lab(ROOT / "mappings")
        self.router = Router(self.store, self.config, Registry().resolve, 8)
        self.runner = DeliveryRunner(self.store)
        dests: dict[str, Any] = {}
        for name, cfg in self.config.destinations.items():
            if cfg.get("enabled") is False:
                continue
            dests[name] = (build_destination(name, cfg) if cfg["type"] == "file"
                           else NullDestination(name, cfg))
        self.destinations = dests
        self.runner.configure(dests, self.config.destinations)

    def route_all(self) -> int:
        total = 0
        while True:
            count, _touched, _acks = self.router.route_batch(ROUTE_BATCH)
            total += count
            if count == 0:
                return total

    async def _deliver(self) -> None:
        for p in range(self.router.partitions):
            await self.runner.run_partition(p)

    def deliver_all(self) -> None:
        asyncio.run(self._deliver())

    def stages(self) -> dict[str, float]:
        out = {"router": self.router.cpu_seconds}
        out.update({f"transformer:{k}": v for k, v in self.router.transformer_cpu.items()})
        out["recorder"] = self.runner.recorder_cpu_seconds
        for name, dest in self.destinations.items():
            cpu = getattr(dest, "cpu_seconds", None)
            if cpu is not None:
                out[f"destination:{name}"] = cpu
        return out

    def close(self) -> None:
        asyncio.run(self.runner.aclose())
        self.store.close()


def profile_threads(bench: Bench, profiles: list[cProfile.Profile]) -> None:
    """cProfile sees one thread: the recorder's and the file destinations' work runs in
    others, so each of their calls runs under a profile of its own, merged at the end."""
    def wrap(fn: Any) -> Any:
        def run(*a: Any, **kw: Any) -> Any:
            prof = cProfile.Profile()
            profiles.append(prof)
            prof.enable()
            try:
                return fn(*a, **kw)
            finally:
                prof.disable()
        return run

    recorder = bench.runner._recorder
    recorder._save = wrap(recorder._save)
    for dest in bench.destinations.values():
        if hasattr(dest, "_write_batch"):
            dest._write_batch = wrap(dest._write_batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--store-url", default=None, help="an empty PostgreSQL database, or SQLite")
    ap.add_argument("--profile", default=None, help="write a cProfile of the timed phases")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="parcours-route-cpu-"))
    try:
        bench = Bench(args.store_url, base)
        # Warm-up: catalogue, mappings, unit plans, statement caches.
        store_all(bench.store, arrivals(100, 50, "W"))
        bench.route_all()
        bench.deliver_all()
        before = bench.stages()
        store_all(bench.store, arrivals(args.messages, args.patients, "M"))
        prof = cProfile.Profile() if args.profile else None
        threads: list[cProfile.Profile] = []
        if prof:
            profile_threads(bench, threads)
            prof.enable()
        t0 = time.process_time()
        routed = bench.route_all()
        t1 = time.process_time()
        bench.deliver_all()
        t2 = time.process_time()
        if prof:
            prof.disable()
            import pstats

            stats = pstats.Stats(prof)
            for p in threads:
                stats.add(p)
            stats.dump_stats(args.profile)
        after = bench.stages()
        n = args.messages
        if routed != n:
            raise SystemExit(f"routed {routed} of {n}")
        per = {k: (after[k] - before.get(k, 0.0)) / n * 1e6 for k in after}
        routing = (t1 - t0) / n * 1e6
        delivery = (t2 - t1) / n * 1e6
        in_dest = sum(v for k, v in per.items() if k.startswith(("recorder", "destination:")))
        print(f"{machine_line()}, load average {load_average()}, "
              f"{bench.store.dialect}, {n} ORU^R01 12 OBX, {args.patients} patients")
        print("| stage | CPU µs per ORU |")
        print("|---|---:|")
        for k, v in per.items():
            print(f"| {k} | {v:,.0f} |")
        print(f"| delivery: event loop, outbox reads (rest of the phase) | "
              f"{delivery - in_dest:,.0f} |")
        print(f"| **routing phase (process CPU)** | **{routing:,.0f}** |")
        print(f"| **delivery phase (process CPU)** | **{delivery:,.0f}** |")
        print(f"| **total** | **{routing + delivery:,.0f}** |")
        bench.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
