"""A retention pass over a large store, with intake committing beside it (issue #16).

Generates N settled messages (bench/search.py's generator), then runs `Pruner` with a zero-
day payload policy while another process commits one arrival every 5 ms through the store's
group-commit path (`Store.save_arrivals`, the call intake's committer makes): `parcours
serve` runs intake in one process and routing, where the scheduled pass runs, in its worker,
the write gate spanning both by an flock (`--intake-thread`: a thread of the pruner's
process instead, as the first runs of this bench did — it adds the GIL to what intake waits
for). Prints messages pruned per second, the pruning transactions' holds of the write lock
(p50, p99, max), the file bytes before and after (SQLite), the commit latency of the
arrivals (p50, p99, p99.9, max, and how many took over 10 and 50 ms) without and with the
pass running, the load average, and on PostgreSQL what autovacuum did meanwhile
(pg_stat_user_tables).

    .venv/bin/python bench/prune.py --messages 200000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.search import _drop_pg, _pg_store, generate  # noqa: E402
from engine.store.database import Arrival, Store  # noqa: E402
from engine.store.models import MessageStatus  # noqa: E402
from engine.store.prune import Pruner  # noqa: E402
from engine.store.retention import payloads_only  # noqa: E402

RAW = (b"MSH|^~\\&|LAB|H|PARCOURS|X|20260101120000||ORU^R01|X|P|2.5.1\rPID|||1^^^H^PI\r"
       + b"OBX|1|TX|||" + b"x" * 1800 + b"\r")


def commits(store: Store, stop: threading.Event, out: list[float],
            at: list[float] | None = None) -> None:
    while not stop.is_set():
        a = Arrival(channel="bench", raw=RAW, status=MessageStatus.ACCEPTED)  # never pruned
        t0 = time.perf_counter()
        store.save_arrivals([a])
        out.append((time.perf_counter() - t0) * 1000)
        if at is not None:
            at.append(t0)
        time.sleep(0.005)


def _child(url: str, stop: Any, out: Any) -> None:
    """The intake side in its own process, as `parcours serve` runs it beside its worker
    (the pruner runs where routing does): the write gate spans both through its flock."""
    store = Store(url)
    samples: list[float] = []
    starts: list[float] = []
    store.save_arrivals([Arrival(channel="bench", raw=RAW, status=MessageStatus.ACCEPTED)])
    out.send("ready")  # imports done, connection open: the measured window starts now
    commits(store, stop, samples, starts)  # type: ignore[arg-type]
    out.send((samples, starts))
    store.close()


class Committer:
    """Arrivals committed every 5 ms in a thread of this process or in a child process."""

    def __init__(self, store: Store, in_process: bool) -> None:
        self.store = store
        self.in_process = in_process
        self.samples: list[float] = []
        self.starts: list[float] = []

    def start(self) -> None:
        if self.in_process:
            self.stop: Any = threading.Event()
            self.worker: Any = threading.Thread(
                target=commits, args=(self.store, self.stop, self.samples, self.starts))
        else:
            ctx = mp.get_context("spawn")
            self.stop = ctx.Event()
            self.pipe, child_end = ctx.Pipe()
            self.worker = ctx.Process(target=_child, args=(self.store.url, self.stop,
                                                            child_end))
        self.worker.start()
        if not self.in_process:
            assert self.pipe.recv() == "ready"

    def finish(self) -> tuple[list[float], list[float]]:
        self.stop.set()
        if not self.in_process:
            self.samples, self.starts = self.pipe.recv()
        self.worker.join()
        return self.samples, self.starts

    def run_for(self, seconds: float) -> tuple[list[float], list[float]]:
        self.start()
        time.sleep(seconds)
        return self.finish()


def _q(s: list[float], q: float) -> float:
    return s[min(len(s) - 1, int(q * (len(s) - 1)))]


def _latency(samples: list[float]) -> str:
    s = sorted(samples)
    if not s:
        return "none"
    over10 = sum(1 for x in s if x > 10)
    over50 = sum(1 for x in s if x > 50)
    return (f"p50 {statistics.median(s):.1f} ms, p99 {_q(s, 0.99):.1f} ms, p99.9 "
            f"{_q(s, 0.999):.1f} ms, max {s[-1]:.1f} ms; >10 ms: {over10}, >50 ms: {over50} "
            f"(of {len(s)})")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


PG_STATS = ("SELECT relname, n_live_tup, n_dead_tup, autovacuum_count, vacuum_count, "
            "last_autovacuum IS NOT NULL FROM pg_stat_user_tables WHERE relname IN "
            "('messages', 'deliveries') ORDER BY relname")


def _pg_stats(store: Store) -> list[tuple[object, ...]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(PG_STATS)]


def _pg_watch(store: Store, stop: threading.Event, out: list[str]) -> None:
    """What autovacuum does while the pass runs: sampled every 5 s."""
    t0 = time.perf_counter()
    while not stop.wait(5):
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT n_dead_tup, autovacuum_count FROM pg_stat_user_tables "
                "WHERE relname = 'messages'").all()
            running = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'autovacuum:%%'"
            ).scalar_one()
        if rows:
            out.append(f"t={time.perf_counter() - t0:.0f}s dead={rows[0][0]} "
                       f"autovacuums={rows[0][1]} running={running}")


def run(kind: str, n: int, raw_bytes: int, budget_ms: float | None, in_process: bool) -> None:
    tmp = pg_name = None
    if kind == "sqlite":
        tmp = tempfile.TemporaryDirectory()
        store = Store(f"sqlite:///{Path(tmp.name) / 'prune.db'}")
    else:
        store, pg_name = _pg_store(False)
    store.migrate()
    seconds = generate(store, n, raw_bytes)
    if kind == "sqlite":
        # The generator's one INSERT of N rows left a WAL the size of the database, which no
        # live store has; empty it so the pass meets the WAL intake leaves.
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    print(f"{kind}: {n:,} messages of {raw_bytes} bytes generated in {seconds:.1f} s "
          f"(load average {_load()})")
    if kind == "postgresql":
        with store.engine.connect() as conn:
            names = ("autovacuum", "autovacuum_naptime", "autovacuum_vacuum_scale_factor",
                     "autovacuum_vacuum_threshold", "autovacuum_vacuum_cost_limit",
                     "autovacuum_vacuum_cost_delay")
            print("  " + ", ".join(f"{k}={conn.exec_driver_sql(f'SHOW {k}').scalar_one()}"
                                   for k in names))
        print(f"  before: {_pg_stats(store)}")
    quiet, _ = Committer(store, in_process).run_for(5)
    stop = threading.Event()
    committer = Committer(store, in_process)
    committer.start()
    watch: list[str] = []
    w = None
    if kind == "postgresql":
        w = threading.Thread(target=_pg_watch, args=(store, stop, watch))
        w.start()
    extra = {} if budget_ms is None else {"budget_s": budget_ms / 1000}
    try:  # the version before the time budget (bench the older checkout) takes no options
        pruner = Pruner(store, payloads_only(), **extra)  # type: ignore[arg-type]
    except TypeError:
        pruner = Pruner(store, payloads_only())
    t0 = time.perf_counter()
    report = pruner.run()
    elapsed = time.perf_counter() - t0
    stop.set()
    busy, starts = committer.finish()
    if w is not None:
        w.join()
    print(f"  pruned {report.payloads:,} messages in {elapsed:.1f} s "
          f"({report.payloads / elapsed:,.0f}/s, space included), {report.batches} batches, "
          f"longest batch {report.longest_batch_ms:.1f} ms")
    holds = sorted(getattr(report, "batch_ms", []))
    if holds:
        print(f"  prune transactions: p50 {statistics.median(holds):.1f} ms, p99 "
              f"{_q(holds, 0.99):.1f} ms, max {holds[-1]:.1f} ms, most rows in one "
              f"{report.most_rows_in_batch}; {report.vacuum_steps} vacuum steps, longest "
              f"{report.longest_vacuum_step_ms:.1f} ms")
        commit = sorted(report.commit_ms)
        print(f"  their COMMIT alone: p50 {statistics.median(commit):.1f} ms, p99 "
              f"{_q(commit, 0.99):.1f} ms, max {commit[-1]:.1f} ms")
    print(f"  store bytes {report.file_bytes_before:,} -> {report.file_bytes_after:,}")
    print(f"  {report.vacuum_note}")
    print(f"  intake commit, alone:       {_latency(quiet)}")
    print(f"  intake commit, during pass: {_latency(busy)}")
    print(f"  load average after: {_load()}")
    # Where the slowest commits fell: the pass's phases (pruning, then the space given back).
    phases = sorted([("pruning", t0), *getattr(report, "phases", {}).items()],
                    key=lambda kv: kv[1])
    for ms, start in sorted(zip(busy, starts, strict=True), reverse=True)[:5]:
        phase = [name for name, begun in phases if begun <= start][-1:] or ["before"]
        print(f"  slow commit {ms:.1f} ms at t={start - t0:.1f} s of {elapsed:.1f} s "
              f"({phase[0]})")
    if kind == "postgresql":
        for line in watch:
            print(f"  autovacuum watch: {line}")
        print(f"  after (VACUUM included): {_pg_stats(store)}")
    store.close()
    if tmp is not None:
        tmp.cleanup()
    if pg_name:
        _drop_pg(pg_name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--raw-bytes", type=int, default=2000)
    ap.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"],
                    choices=["sqlite", "postgresql"])
    ap.add_argument("--budget-ms", type=float, default=None,
                    help="the pruner's work budget per transaction (default: BUDGET_S)")
    ap.add_argument("--intake-thread", action="store_true",
                    help="commit the arrivals from a thread of the pruner's process (the "
                         "first runs of this bench) rather than from a process of their own")
    args = ap.parse_args()
    where = "a thread beside the pruner" if args.intake_thread else "its own process"
    print(f"intake committer: {where}")
    for kind in args.stores:
        run(kind, args.messages, args.raw_bytes, args.budget_ms, args.intake_thread)


if __name__ == "__main__":
    main()
