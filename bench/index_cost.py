"""What the search indexes of migration 0013_prune cost intake (issue #16).

    .venv/bin/python bench/index_cost.py [--messages 200000] [--batch 8] [--rounds 10]

Two stores side by side, both migrated to the newest revision and filled with the same N
messages (bench/search.py's generator), one of them with 0013's search indexes dropped
(channel, type+trigger, duplicate_of, the bare patient id; and (received_at, id) on
PostgreSQL). Then the same arrivals — bench/harness.py's ORU^R01, one patient each, through
`Intake.decide` — are committed into each through `Store.save_arrivals` (what intake's group
commit calls), `--batch` per commit, in alternating rounds (A, B, A, B, ...) so drift of the
shared machine's load falls on both. Printed per store: commit wall time p50 / p99, commits
per second, and CPU per message: this process (SQLAlchemy, sqlite3, the fsync's kernel
time) and, on PostgreSQL, the server backend of the intake connection (/proc/<pid>/stat).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import machine, oru  # noqa: E402
from bench.search import _drop_pg, _pg_store, generate  # noqa: E402
from engine.intake.handler import Intake, IntakePolicy  # noqa: E402
from engine.store.database import Arrival, Store  # noqa: E402

SEARCH_INDEXES = ("ix_messages_channel_id", "ix_messages_type_id", "ix_messages_duplicate_of",
                  "ix_messages_patient_bare", "ix_messages_received_id")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _backend_cpu(store: Store) -> float:
    """Seconds of CPU of the PostgreSQL backend serving the intake connection."""
    pid = getattr(store, "_bench_backend_pid", None)
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _open(kind: str, n: int, drop: bool, tmp: Path) -> tuple[Store, str | None]:
    if kind == "sqlite":
        store, name = Store(f"sqlite:///{tmp / ('without.db' if drop else 'with.db')}"), None
    else:
        store, name = _pg_store(False)
    store.migrate()
    generate(store, n, 1000)
    if kind == "sqlite":  # the generator's one huge INSERT left a WAL no live store has
        with store.engine.begin() as conn:
            # The generated rows have no dedup key: ANALYZE then tells SQLite that the
            # unique dedup_key index matches every row, and intake's resend lookup
            # (`dedup_key IN (...)`) scans the table instead. A live store's keys are unique.
            conn.exec_driver_sql("DELETE FROM sqlite_stat1 "
                                 "WHERE idx = 'sqlite_autoindex_messages_1'")
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        store.engine.dispose()  # statistics are read when a connection opens
    if drop:
        with store.engine.begin() as conn:
            for ix in SEARCH_INDEXES:
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {ix}")
    with store.engine.connect() as conn:
        names = sorted(r[0] for r in conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'"
            if kind == "sqlite" else
            "SELECT indexname FROM pg_indexes WHERE tablename = 'messages'"))
    print(f"  {'without' if drop else 'with'}: {len(names)} indexes on messages",
          file=sys.stderr)
    if kind == "postgresql":
        store.save_arrivals([])  # opens the intake connection
        raw = store._intake_conn.dbapi_connection  # type: ignore[attr-defined]
        with raw.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            store._bench_backend_pid = cur.fetchone()[0]  # type: ignore[attr-defined]
        raw.commit()
    return store, name


def run(kind: str, n: int, batch: int, rounds: int, per_round: int) -> None:
    intake = Intake(None)  # type: ignore[arg-type]  # decide() never touches the committer
    policy = IntakePolicy(channel="main")
    with tempfile.TemporaryDirectory(prefix="parcours-ixcost-") as tmp:
        stores = {label: _open(kind, n, label == "without", Path(tmp))
                  for label in ("with", "without")}
        walls: dict[str, list[float]] = {k: [] for k in stores}
        cpu: dict[str, float] = dict.fromkeys(stores, 0.0)
        server: dict[str, float] = dict.fromkeys(stores, 0.0)
        seq = 0
        print(f"  load average before: {_load()}", file=sys.stderr)
        for r in range(rounds):
            for label in (("with", "without") if r % 2 == 0 else ("without", "with")):
                store = stores[label][0]
                batches: list[list[Arrival]] = []
                for _ in range(per_round):
                    batches.append([intake.decide(oru(f"IX{seq + j}", patient=seq + j),
                                                  policy).arrival for j in range(batch)])
                    seq += batch
                c0, s0 = time.process_time(), _backend_cpu(store)
                for arrivals in batches:
                    t0 = time.perf_counter()
                    store.save_arrivals(arrivals)
                    walls[label].append((time.perf_counter() - t0) * 1000)
                cpu[label] += time.process_time() - c0
                server[label] += _backend_cpu(store) - s0
        load = _load()
        print("| store | search indexes | commit p50 ms | commit p99 ms | commits/s | "
              "client CPU µs/msg | server CPU µs/msg |")
        for label in ("with", "without"):
            w = sorted(walls[label])
            msgs = len(w) * batch
            srv = f"{server[label] / msgs * 1e6:.0f}" if kind == "postgresql" else "-"
            print(f"| {kind} | {label} | {statistics.median(w):.2f} | "
                  f"{w[int(0.99 * (len(w) - 1))]:.2f} | {len(w) / (sum(w) / 1000):.0f} | "
                  f"{cpu[label] / msgs * 1e6:.0f} | {srv} |")
        print(f"  load average after: {load}", file=sys.stderr)
        for store, name in stores.values():
            store.close()
            if name:
                _drop_pg(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200_000, help="rows already stored")
    ap.add_argument("--batch", type=int, default=8, help="arrivals per commit [8]")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=100, help="commits per round [100]")
    ap.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"],
                    choices=["sqlite", "postgresql"])
    args = ap.parse_args()
    print(f"# {machine()}", file=sys.stderr)
    for kind in args.stores:
        run(kind, args.messages, args.batch, args.rounds, args.per_round)


if __name__ == "__main__":
    main()
