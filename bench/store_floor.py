"""The floor under durable intake on SQLite: the database's own cost for our message rows.

    .venv/bin/python bench/store_floor.py [--batches 600] [--batch 8]

The messages table as migrated (27 columns, the unique dedup key and the indexes the UI
searches by), rows exactly as intake builds them for the ORU^R01 of bench/intake.py, the
parameters built before the clock starts: what is timed is one multi-row INSERT and one
COMMIT per batch through the sqlite3 module, nothing of Parcours' own Python. CPU is this
process's user + system time per message (the fsync's kernel time included).

Read it against bench/intake.py's "server CPU µs/msg": at 40 % of the bare server's rate the
whole engine has roughly the budget of the (c2) row (listener + decision) to spend per message.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from intake import machine, oru  # noqa: E402  (bench/intake.py: same message, same report)

from engine.intake.handler import Intake, IntakePolicy  # noqa: E402
from engine.store.database import Store, _multi_insert  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8, help="rows per commit [8]")
    args = ap.parse_args()
    print(f"# {machine()}", file=sys.stderr)
    intake = Intake(None)  # type: ignore[arg-type]  # decide() never touches the committer
    policy = IntakePolicy(channel="main")
    print("| synchronous | rows per commit | ms per commit (wall) | CPU µs per message |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="parcours-floor-") as tmp:
        path = Path(tmp) / "floor.db"
        Store(f"sqlite:///{path}").migrate()
        for mode in ("FULL", "NORMAL", "OFF"):
            db = sqlite3.connect(path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={mode}")
            batches = [
                [v for j in range(args.batch)
                 for v in intake.decide(oru(f"{mode}-{i}-{j}"), policy).arrival.params(True)]
                for i in range(args.batches)
            ]
            sql = _multi_insert(args.batch, True)
            wall, cpu = time.perf_counter(), time.process_time()
            for params in batches:
                cur = db.cursor()
                cur.execute(sql, params)
                cur.fetchall()
                db.commit()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            db.close()
            rows = args.batches * args.batch
            print(f"| {mode} | {args.batch} | {wall / args.batches * 1e3:.3f} | "
                  f"{cpu / rows * 1e6:.0f} |")


if __name__ == "__main__":
    main()
