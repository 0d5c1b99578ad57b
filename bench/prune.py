"""A retention pass over a large store, with intake committing beside it (issue #16).

Generates N settled messages (bench/search.py's generator), then runs `Pruner` with a zero-day
payload policy while a thread commits one arrival every 5 ms through the store's group-commit
path (`Store.save_arrivals`, the call intake's committer makes). Prints messages pruned per
second, the pruning transactions' holds of the write lock (p50, p99, max), the file bytes
before and after (SQLite), the commit latency of the arrivals (p50, p99, p99.9, max, and how
many took over 10 and 50 ms) without and with the pass running, the load average, and on
PostgreSQL what autovacuum did meanwhile (pg_stat_user_tables).

    .venv/bin/python bench/prune.py --messages 200000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.search import _drop_pg, _pg_store, generate  # noqa: E402
from engine.store.database import Arrival, Store  # noqa: E402
from engine.store.models import MessageStatus  # noqa: E402
from engine.store.prune import Pruner  # noqa: E402
from engine.store.retention import payloads_only  # noqa: E402

RAW = (b"MSH|^~\\&|LAB|H|PARCOURS|X|20260101120000||ORU^R01|X|P|2.5.1\rPID|||1^^^H^PI\r"
       + b"OBX|1|TX|||" + b"x" * 1800 + b"\r")


def commits(store: Store, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        a = Arrival(channel="bench", raw=RAW, status=MessageStatus.ACCEPTED)  # never pruned
        t0 = time.perf_counter()
        store.save_arrivals([a])
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.005)


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
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'autovacuum:%'"
            ).scalar_one()
        if rows:
            out.append(f"t={time.perf_counter() - t0:.0f}s dead={rows[0][0]} "
                       f"autovacuums={rows[0][1]} running={running}")


def run(kind: str, n: int, raw_bytes: int, budget_ms: float | None) -> None:
    tmp = pg_name = None
    if kind == "sqlite":
        tmp = tempfile.TemporaryDirectory()
        store = Store(f"sqlite:///{Path(tmp.name) / 'prune.db'}")
    else:
        store, pg_name = _pg_store(False)
    store.migrate()
    seconds = generate(store, n, raw_bytes)
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
    quiet: list[float] = []
    stop = threading.Event()
    t = threading.Thread(target=commits, args=(store, stop, quiet))
    t.start()
    time.sleep(5)
    stop.set()
    t.join()
    busy: list[float] = []
    stop = threading.Event()
    t = threading.Thread(target=commits, args=(store, stop, busy))
    t.start()
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
    t.join()
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
    print(f"  store bytes {report.file_bytes_before:,} -> {report.file_bytes_after:,}")
    print(f"  {report.vacuum_note}")
    print(f"  intake commit, alone:       {_latency(quiet)}")
    print(f"  intake commit, during pass: {_latency(busy)}")
    print(f"  load average after: {_load()}")
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
    args = ap.parse_args()
    for kind in args.stores:
        run(kind, args.messages, args.raw_bytes, args.budget_ms)


if __name__ == "__main__":
    main()
