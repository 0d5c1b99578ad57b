"""A retention pass over a large store, with intake committing beside it (issue #16).

Generates N settled messages (bench/search.py's generator), then runs `Pruner` with a zero-day
payload policy while a thread commits one arrival every 5 ms through the store's group-commit
path (`Store.save_arrivals`, the call intake's committer makes). Prints messages pruned per
second, the longest pruning transaction, the file bytes before and after (SQLite) and the
commit latency of the arrivals (p50, p99, max) without and with the pass running.

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


def _latency(samples: list[float]) -> str:
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(0.99 * (len(s) - 1)))]
    return f"p50 {statistics.median(s):.1f} ms, p99 {p99:.1f} ms, max {s[-1]:.1f} ms ({len(s)})"


def run(kind: str, n: int, raw_bytes: int) -> None:
    tmp = pg_name = None
    if kind == "sqlite":
        tmp = tempfile.TemporaryDirectory()
        store = Store(f"sqlite:///{Path(tmp.name) / 'prune.db'}")
    else:
        store, pg_name = _pg_store(False)
    store.migrate()
    seconds = generate(store, n, raw_bytes)
    print(f"{kind}: {n:,} messages of {raw_bytes} bytes generated in {seconds:.1f} s")
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
    t0 = time.perf_counter()
    report = Pruner(store, payloads_only()).run()
    elapsed = time.perf_counter() - t0
    stop.set()
    t.join()
    print(f"  pruned {report.payloads:,} messages in {elapsed:.1f} s "
          f"({report.payloads / elapsed:,.0f}/s, space included), {report.batches} batches, "
          f"longest batch {report.longest_batch_ms:.1f} ms")
    print(f"  store bytes {report.file_bytes_before:,} -> {report.file_bytes_after:,}")
    print(f"  {report.vacuum_note}")
    print(f"  intake commit, alone:       {_latency(quiet)}")
    print(f"  intake commit, during pass: {_latency(busy)}")
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
    args = ap.parse_args()
    for kind in args.stores:
        run(kind, args.messages, args.raw_bytes)


if __name__ == "__main__":
    main()
