"""Message search at scale (issue #16): N messages generated into SQLite and PostgreSQL with
one set-based INSERT … SELECT each, then p50/p95 per filter of the query the UI and API run
(engine/ui/messages.py `search`: newest first, a page of 50).

The generated store has the shape of a year of a regional platform's traffic: four channels,
five message types, 50,000 patients, one message every ~30 s, 95 % done and the rest spread
over failed, error, duplicate, rejected and unrouted; raw bytes of `--raw-bytes` each.

    .venv/bin/python bench/search.py --messages 1000000
    .venv/bin/python bench/search.py --messages 1000000 --stores postgresql --keep
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.store.database import Store  # noqa: E402
from engine.ui.messages import Search, search  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
START = datetime(2025, 1, 1, tzinfo=UTC)
STEP_S = 30  # one message every 30 s
PATIENTS = 50_000
TYPES = [("ADT", "A01"), ("ORU", "R01"), ("ORM", "O01"), ("SIU", "S12"), ("MDM", "T02")]
CHANNELS = ["main", "lab-drop", "lab-mllp", "adt-hosp"]

# i is 1..N; every column a function of i, so both stores hold the same rows.
_SELECT = """
SELECT {channel}, {received}, '10.0.0.1', 'APP' || ({i} % 7), 'FAC' || ({i} % 11),
       {mtype}, {trigger}, {mtype} || '_' || {trigger}, 'C' || {i}, '2.5.1', 'P', 'UNICODE UTF-8',
       'H' || ({i} % 3) || '&1.2.250&ISO|' || ({i} % {patients}), NULL, {raw_bytes}, 0, {raw},
       {status}, NULL, 'AA', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
"""
_COLUMNS = ("channel, received_at, remote, sending_application, sending_facility, "
            "message_type, trigger_event, structure, control_id, version, processing_id, "
            "charset, patient_key, application_ack_type, size, truncated, raw, status, error, "
            "ack_code, ack, app_ack_code, app_ack, app_ack_status, dedup_key, duplicate_of, "
            "content_digest, reuse_of, file_id, pruned_at, origin")


def _case(expr: str, values: list[str]) -> str:
    whens = " ".join(f"WHEN {k} THEN '{v}'" for k, v in enumerate(values))
    return f"(CASE {expr} {whens} END)"


def _status(i: str) -> str:
    return (f"(CASE WHEN {i} % 100 < 95 THEN 'done' WHEN {i} % 100 = 95 THEN 'failed' "
            f"WHEN {i} % 100 = 96 THEN 'error' WHEN {i} % 100 = 97 THEN 'duplicate' "
            f"WHEN {i} % 100 = 98 THEN 'rejected' ELSE 'unrouted' END)")


def generate(store: Store, n: int, raw_bytes: int, step_s: int = STEP_S) -> float:
    started = time.perf_counter()
    sqlite = store.dialect == "sqlite"
    i = "c.i" if sqlite else "g.i"
    parts = {
        "i": i, "patients": PATIENTS, "raw_bytes": raw_bytes,
        "channel": _case(f"{i} % 4", CHANNELS),
        "mtype": _case(f"{i} % 5", [t for t, _ in TYPES]),
        "trigger": _case(f"{i} % 5", [e for _, e in TYPES]),
        "status": _status(i),
    }
    if sqlite:
        parts["received"] = (f"strftime('%Y-%m-%d %H:%M:%f', '{START:%Y-%m-%d %H:%M:%S}', "
                             f"'+' || ({i} * {step_s}) || ' seconds')")
        parts["raw"] = f"zeroblob({raw_bytes})"
        sql = (f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) "
               f"INSERT INTO messages ({_COLUMNS}) " + _SELECT.format(**parts) + " FROM c")
    else:
        parts["received"] = (f"(TIMESTAMPTZ '{START.isoformat()}' + {i} * INTERVAL "
                             f"'{step_s} seconds')")
        parts["raw"] = f"convert_to(repeat('x', {raw_bytes}), 'UTF8')"
        sql = (f"INSERT INTO messages ({_COLUMNS}) " + _SELECT.format(**parts)
               + f" FROM generate_series(1, {n}) AS g(i)").replace("%", "%%")  # psycopg
    with store.engine.begin() as conn:
        conn.exec_driver_sql(sql)
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # PostgreSQL: VACUUM sets the visibility map autovacuum keeps in a live store, which
        # index-only scans need.
        conn.exec_driver_sql("ANALYZE" if sqlite else "VACUUM ANALYZE messages")
    return time.perf_counter() - started


def filters(n: int, rnd: random.Random, step_s: int = STEP_S) -> dict[str, Any]:
    """Each filter a factory: a new random value per run, as operators search."""
    end = START + timedelta(seconds=n * step_s)
    span = (end - START).total_seconds()

    def day() -> Search:
        since = START + timedelta(seconds=rnd.uniform(0, span - 86400))
        return Search(since=since, until=since + timedelta(days=1))

    def week_oru() -> Search:
        since = START + timedelta(seconds=rnd.uniform(0, span - 7 * 86400))
        return Search(since=since, until=since + timedelta(days=7), type="ORU^R01")

    return {
        "no filter (first page)": lambda: Search(),
        "control id": lambda: Search(control_id=f"C{rnd.randint(1, n)}"),
        "patient, bare id": lambda: Search(patient=str(rnd.randint(0, PATIENTS - 1))),
        "patient, authority + id": lambda: Search(
            patient=f"H{rnd.randint(0, 2)}&1.2.250&ISO|{rnd.randint(0, PATIENTS - 1)}"),
        "type ORU^R01": lambda: Search(type="ORU^R01"),
        "type ADT (any trigger)": lambda: Search(type="ADT"),
        "one day": day,
        "one week + ORU^R01": week_oru,
        "status error (1 %)": lambda: Search(status="error"),
        "status done (95 %)": lambda: Search(status="done"),
        "channel": lambda: Search(channel=rnd.choice(CHANNELS)),
        "channel + status failed": lambda: Search(channel=rnd.choice(CHANNELS),
                                                  status="failed"),
        "old page (before id N/2)": lambda: Search(before_id=n // 2),
    }


def measure(store: Store, n: int, runs: int, seed: int, step_s: int = STEP_S,
            only: list[str] | None = None) -> dict[str, tuple[float, float, int]]:
    rnd = random.Random(seed)
    out: dict[str, tuple[float, float, int]] = {}
    for name, make in filters(n, rnd, step_s).items():
        if only and not any(o in name for o in only):
            continue
        search(store, make())  # warm the cache the way a second search would
        times: list[float] = []
        rows = 0
        for _ in range(runs):
            s = make()
            t0 = time.perf_counter()
            rows = len(search(store, s))
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
        out[name] = (statistics.median(times), p95, rows)
    return out


def _pg_store(keep: bool) -> tuple[Store, str]:
    from sqlalchemy import create_engine, text

    name = "parcours_bench_search" if keep else f"parcours_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return Store(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"), name


def _drop_pg(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--raw-bytes", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=40, help="searches per filter")
    ap.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"],
                    choices=["sqlite", "postgresql"])
    ap.add_argument("--keep", action="store_true",
                    help="keep the generated databases (SQLite file in ./var/bench-search.db)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--step-seconds", type=int, default=STEP_S,
                    help="seconds between generated messages: 30 is 1M a year, 3 the density "
                         "of 10M a year (a day then holds ten times the rows)")
    ap.add_argument("--filters", nargs="*", help="only the filters whose name contains one")
    args = ap.parse_args()
    results: dict[str, dict[str, tuple[float, float, int]]] = {}
    for kind in args.stores:
        tmp = None
        pg_name = None
        if kind == "sqlite":
            if args.keep:
                path = Path("var/bench-search.db").resolve()
                for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    p.unlink(missing_ok=True)
            else:
                tmp = tempfile.TemporaryDirectory()
                path = Path(tmp.name) / "search.db"
            store = Store(f"sqlite:///{path}")
        else:
            store, pg_name = _pg_store(args.keep)
        store.migrate()
        seconds = generate(store, args.messages, args.raw_bytes, args.step_seconds)
        print(f"{kind}: {args.messages:,} messages generated in {seconds:.1f} s", flush=True)
        results[kind] = measure(store, args.messages, args.runs, args.seed,
                                args.step_seconds, args.filters)
        store.close()
        if tmp is not None:
            tmp.cleanup()
        if pg_name and not args.keep:
            _drop_pg(pg_name)
    names = list(next(iter(results.values())))
    header = "| filter | " + " | ".join(f"{k} p50 ms | {k} p95 ms" for k in results) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(results)))
    for name in names:
        cells = " | ".join(f"{results[k][name][0]:.1f} | {results[k][name][1]:.1f}"
                           for k in results)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
