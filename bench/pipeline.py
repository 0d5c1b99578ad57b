"""Pipeline benchmark (issue #12): what a user waits for after the ACK, beside python-hl7's server.

    .venv/bin/python bench/pipeline.py [--messages 4000] [--backlog 50000] [--connections 8]
                                       [--patients 1000] [--scaled [1 2 3]] [--json out.json]
                                       [--rows a b c d e]

Every server and engine runs in its own process; this process is the load client, the same
for all rows: `--connections` connections, message i on connection i % connections, each
sending one ORU^R01 (12 OBX, bench/harness.py) and waiting for its ACK (original mode).

(a) python-hl7's asyncio MLLP server (hl7.mllp: hl7.parse + create_ack, storing nothing), in
    its own process, the same messages and load: the baseline of this run. Beside it,
    `hl7.parse` CPU per message: time.process_time over parsing all the messages in this
    process.
(b) Parcours as `make run` starts it: the `parcours` console script of this venv, `serve`, in
    a temporary folder holding an unchanged copy of the checkout's routes.yaml (found as
    ./routes.yaml), with only PARCOURS_HOME and the two ports set (and PYTHONPATH, so the
    engine is this checkout's): SQLite store, in-process bus. `--patients` patients. A warm-up
    of 100 messages is sent and settled first. Reported:
    - ACKs while routing: messages / (first send to last ACK);
    - settled: messages / (first send to the moment the store says every message `done` or
      `failed`, i.e. all its deliveries final; polled read-only every 0.1 s). Then checked:
      every message has one delivery to each of archive, lab-normalised, timeline and events,
      and each file destination wrote one file per message;
    - engine CPU per message: utime + stime of the engine process and of every process it
      spawned (live, or reaped: cutime + cstime), from /proc, over the run, / messages;
    - CPU per message by stage, when the engine exposes the counter
      `parcours_stage_cpu_seconds_total{stage=...}` on /metrics (delta over the run), else n/a.
(c) the same with every message for one patient (one patient key).
(d) a backlog of `--backlog` messages, then the drain. The engine has no switch to pause a
    destination, so the backlog is built with what an operator has:
      1. `parcours serve` with a routes file derived from the shipped one with `routes: []`
         (PARCOURS_ROUTES): the messages are ACKed and stored, and marked `unrouted`;
      2. the engine is stopped (SIGTERM) and `parcours replay ID…` (the shipped routes)
         routes every stored message again: the outbox now holds all of their deliveries,
         `pending`, as after an outage of every destination (the issue's case, the timeline
         and one file destination paused, is a subset of it);
      3. `parcours serve` with the shipped routes on the same PARCOURS_HOME: the engine resumes
         the unfinished deliveries from the store. Drain: deliveries / (engine start to the
         moment every delivery of the backlog is final, polled every 0.25 s).
    The ACK rate of step 1 and the replay rate of step 2 are printed for information.
(e) `--scaled`: PostgreSQL + RabbitMQ (PARCOURS_STORE_URL, PARCOURS_BROKER_URL; a fresh
    database and vhost per run, as bench/route.py), 1, 2 and 3 `parcours serve` processes,
    connection c to process c % n. Partitions owned by each (the gauge
    `parcours_partitions_owned` on each /metrics, else n/a), settled rate, CPU per message
    (all processes and their children).

Ratios are to (a)'s msg/s in the same run (CPU: to `hl7.parse` CPU per message), beside the
issue's goals. On a 2-core machine the load client and the servers share the cores: compare
rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import (  # bench/harness.py
    ROOT,
    Engine,
    console_script,
    free_port,
    load,
    load_average,
    machine,
    oru,
    pg_database,
    process_cpu,
    rabbit_vhost,
    samples,
    stop_process,
    wait_port,
)

# What the shipped routes.yaml does with an ORU^R01 (the DMP destination is disabled there):
# the checks below fail loudly if the shipped routes stop doing it.
DESTINATIONS = ("archive", "lab-normalised", "timeline", "events")
FILE_DIRS = {"archive": "out/archive", "lab-normalised": "out/lab", "events": "out/events"}
FINAL_MESSAGE = ("done", "failed")
FINAL_DELIVERY = ("delivered", "dead")
STAGE_METRIC = "parcours_stage_cpu_seconds_total"
OWNED_METRIC = "parcours_partitions_owned"
WARMUP = 100
METRICS_CACHE_S = 2.5  # monitoring/metrics.py serves a snapshot up to 2 s old
GOALS = {  # issue #12, as ratios to (a) in the same run (cpu: to hl7.parse)
    "ack": (">=", 4.0), "settled": (">=", 2.0), "cpu": ("<=", 0.5),
    "one_patient": (">=", 0.5), "drain": (">=", 4.0), "scaled_2": (">=", 1.0),
}


def log(text: str) -> None:
    print(f"  [{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


# -- the store, read-only, by SQL the schema has had since issue #3 ---------------------------


class Probe:
    """Counts in the engine's store. SQLite is opened read-only (WAL readers never block the
    engine's writer); raw SQL, so that the probe does not depend on the engine's modules."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        if url.startswith("sqlite:///"):
            url = f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"
        self.engine = create_engine(url)

    def _rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params).all()]

    def message_statuses(self) -> dict[str, int]:
        return {s: int(n) for s, n in self._rows(
            "SELECT status, COUNT(*) FROM messages GROUP BY status")}

    def delivery_statuses(self) -> dict[str, int]:
        return {s: int(n) for s, n in self._rows(
            "SELECT status, COUNT(*) FROM deliveries GROUP BY status")}

    def deliveries_by_destination(self, prefix: str) -> dict[str, dict[str, int]]:
        """{destination: {status: count}} for the messages whose MSH-10 starts with prefix."""
        out: dict[str, dict[str, int]] = {}
        for dest, status, n in self._rows(
                "SELECT d.destination, d.status, COUNT(*) FROM deliveries d "
                "JOIN messages m ON m.id = d.message_id "
                "WHERE m.control_id >= :lo AND m.control_id < :hi "
                "GROUP BY d.destination, d.status", lo=prefix, hi=prefix[:-1] + chr(
                    ord(prefix[-1]) + 1)):
            out.setdefault(dest, {})[status] = int(n)
        return out

    def message_ids(self, prefix: str) -> list[int]:
        return [int(r[0]) for r in self._rows(
            "SELECT id FROM messages WHERE control_id >= :lo AND control_id < :hi ORDER BY id",
            lo=prefix, hi=prefix[:-1] + chr(ord(prefix[-1]) + 1))]

    def close(self) -> None:
        self.engine.dispose()


def wait_until(what: str, counts: Callable[[], dict[str, int]], final: tuple[str, ...],
               expected: int, timeout: float, interval: float) -> float:
    """Poll until `expected` rows are in a final status; returns the wall-clock time it was
    seen. Fails with the counts when it does not happen in `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_log = time.monotonic()
    while True:
        seen = counts()
        settled = sum(n for s, n in seen.items() if s in final)
        if settled >= expected:
            return time.time()
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: {settled} of {expected} final after {timeout:.0f} s: "
                             f"{seen}")
        if time.monotonic() - last_log > 15:
            log(f"{what}: {settled} / {expected} {seen}")
            last_log = time.monotonic()
        time.sleep(interval)


def count_files(home: Path, sub: str) -> int:
    folder = home / sub
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


# -- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured row: an engine setup under one load."""

    label: str
    messages: int
    ack_rate: float = math.nan  # msg/s, first send to last ACK
    settled_rate: float = math.nan  # msg/s, first send to every message done/failed
    cpu_per_message: float = math.nan  # seconds
    stages: dict[str, float] | None = None  # stage → CPU seconds per message; None: n/a
    failed: int = 0
    owned: list[float] | None = None  # partitions owned by each process; None: n/a
    deliveries: int = 0
    drain_rate: float = math.nan  # deliveries/s (backlog)
    notes: dict[str, Any] = field(default_factory=dict)


def stage_cpu(before: list[str], after: list[str], n: int) -> dict[str, float] | None:
    """CPU seconds per message by stage, summed over processes; None when no process has it."""
    def totals(texts: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in texts:
            for labels, value in samples(t, STAGE_METRIC):
                stage = labels.get("stage", "?")
                out[stage] = out.get(stage, 0.0) + value
        return out

    b, a = totals(before), totals(after)
    if not a:
        return None
    return {s: (a[s] - b.get(s, 0.0)) / n for s in sorted(a)}


def owned(engines: list[Engine]) -> list[float] | None:
    found = [samples(e.metrics(), OWNED_METRIC) for e in engines]
    if not any(found):
        return None
    return [sum(v for _, v in f) if f else math.nan for f in found]


# -- (a) the baseline ------------------------------------------------------------------------


def baseline(payloads: list[bytes], connections: int) -> tuple[float, float]:
    """python-hl7's server, own process: (msg/s, server CPU seconds per message)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("harness.py")),
                             "--serve", "hl7", "--port", str(port)], cwd=ROOT)
    try:
        wait_port(port, proc)
        warm = [oru(f"W{i}", i) for i in range(WARMUP)]
        asyncio.run(load(port, connections, warm))
        before = process_cpu(proc.pid)
        done = asyncio.run(load(port, connections, payloads))
        cpu = process_cpu(proc.pid) - before
    finally:
        stop_process(proc)
    return len(payloads) / done.seconds, cpu / len(payloads)


def parse_cpu(payloads: list[bytes]) -> float:
    """CPU seconds per message of hl7.parse of the same messages, in this process."""
    import hl7

    texts = [p.decode("utf-8") for p in payloads]
    t0 = time.process_time()
    for t in texts:
        hl7.parse(t)
    return (time.process_time() - t0) / len(texts)


# -- (b), (c), (e): engines under load ------------------------------------------------------------


def shipped_copy(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "routes.yaml"
    shutil.copyfile(ROOT / "routes.yaml", target)
    return target


def check_deliveries(probe: Probe, prefix: str, n: int, homes: list[Path],
                     files_expected: int) -> int:
    """Every message has its four deliveries, final; each file destination wrote a file per
    message. Returns the number of dead deliveries."""
    found = probe.deliveries_by_destination(prefix)
    problems = []
    for dest in DESTINATIONS:
        total = sum(found.get(dest, {}).values())
        if total != n:
            problems.append(f"{dest}: {total} deliveries for {n} messages")
        open_ = sum(v for s, v in found.get(dest, {}).items() if s not in FINAL_DELIVERY)
        if open_:
            problems.append(f"{dest}: {open_} deliveries not final")
    for dest, sub in FILE_DIRS.items():
        files = sum(count_files(h, sub) for h in homes)
        if files != files_expected:
            problems.append(f"{dest}: {files} files in {sub}, {files_expected} expected")
    if problems:
        raise SystemExit(f"{prefix}: " + "; ".join(problems) + f" — deliveries: {found}")
    return sum(s.get("dead", 0) for s in found.values())


def engine_row(label: str, payloads: list[bytes], prefix: str, connections: int,
               timeout: float, *, scaled: int = 0) -> Row:
    """Start the engine(s), warm up, send `payloads`, wait until every message settled."""
    n = len(payloads)
    base = Path(tempfile.mkdtemp(prefix="parcours-bench-pipeline-"))
    with ExitStack() as stack:
        env: dict[str, str] = {}
        if scaled:
            env["PARCOURS_STORE_URL"] = stack.enter_context(pg_database())
            env["PARCOURS_BROKER_URL"] = stack.enter_context(rabbit_vhost())
        engines: list[Engine] = []
        stack.callback(lambda: [e.stop() for e in engines])
        for i in range(max(scaled, 1)):
            cwd = base / f"cwd{i + 1}"
            shipped_copy(cwd)
            engines.append(Engine(base, f"home{i + 1}", env=env, cwd=cwd))
        for e in engines:
            e.wait_ready()
        url = env.get("PARCOURS_STORE_URL") or f"sqlite:///{engines[0].home / 'parcours.db'}"
        probe = Probe(url)
        stack.callback(probe.close)
        ports = [e.mllp_port for e in engines]
        warm = [oru(f"W{i}", i) for i in range(WARMUP)]
        asyncio.run(load(ports, connections, warm))
        wait_until(f"{label} warm-up", probe.message_statuses, FINAL_MESSAGE, WARMUP,
                   timeout, 0.1)
        # /metrics snapshots are cached for a moment: let the one read below be taken after the
        # warm-up, and (with several processes) a rebalance of the partitions finish.
        time.sleep(5 if scaled > 1 else METRICS_CACHE_S)
        owned_before = owned(engines)
        metrics_before = [e.metrics() for e in engines]
        cpu_before = sum(e.cpu() for e in engines)
        done = asyncio.run(load(ports, connections, payloads))
        log(f"{label}: {n} ACKed in {done.seconds:.1f} s")
        settled_at = wait_until(label, probe.message_statuses, FINAL_MESSAGE, WARMUP + n,
                                timeout, 0.1)
        cpu = sum(e.cpu() for e in engines) - cpu_before
        time.sleep(METRICS_CACHE_S)
        metrics_after = [e.metrics() for e in engines]
        row = Row(label, n, ack_rate=n / done.seconds,
                  settled_rate=n / (settled_at - done.start), cpu_per_message=cpu / n,
                  stages=stage_cpu(metrics_before, metrics_after, n),
                  owned=owned(engines) or owned_before)
        row.failed = probe.message_statuses().get("failed", 0)
        dead = check_deliveries(probe, prefix, n, [e.home for e in engines], WARMUP + n)
        row.deliveries = n * len(DESTINATIONS)
        row.notes = {"dead_deliveries": dead, "processes": len(engines),
                     "owned_after_warmup": owned_before}
    shutil.rmtree(base, ignore_errors=True)
    return row


# -- (d) the backlog ---------------------------------------------------------------------------


def intake_only_routes(shipped: Path, target: Path) -> None:
    """The shipped routes file, channels and destinations as they are, no routes."""
    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load(shipped.read_text())
    data["routes"] = []
    with target.open("w") as f:
        yaml.dump(data, f)


def replay(ids: list[int], cwd: Path, env: dict[str, str], chunk: int = 10000) -> None:
    """`parcours replay ID…` with the shipped routes (./routes.yaml), engine stopped."""
    for i in range(0, len(ids), chunk):
        done = subprocess.run([str(console_script()), "replay", *map(str, ids[i:i + chunk])],
                              cwd=cwd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"parcours replay failed ({done.returncode}): "
                             f"{done.stderr[-2000:]}")
        if " 0 new deliveries" in done.stdout:
            raise SystemExit(f"parcours replay routed nothing: {done.stdout[:300]}")


def backlog_row(n: int, patients: int, connections: int, timeout: float) -> Row:
    base = Path(tempfile.mkdtemp(prefix="parcours-bench-backlog-"))
    cwd = base / "cwd"
    shipped = shipped_copy(cwd)
    intake_only = cwd / "intake-only.yaml"
    intake_only_routes(shipped, intake_only)
    payloads = [oru(f"K{i:06d}", i % patients) for i in range(n)]
    row = Row(f"(d) backlog, {n} messages, {patients} patients", n)
    with ExitStack() as stack:
        first = Engine(base, "home", env={"PARCOURS_ROUTES": str(intake_only)}, cwd=cwd)
        stack.callback(first.stop)
        first.wait_ready()
        probe = Probe(f"sqlite:///{first.home / 'parcours.db'}")
        done = asyncio.run(load(first.mllp_port, connections, payloads))
        row.notes["intake_no_routes_ack_rate"] = n / done.seconds
        log(f"(d) {n} ACKed with no routes in {done.seconds:.1f} s")
        wait_until("(d) intake", probe.message_statuses, ("unrouted",), n, timeout, 0.25)
        ids = probe.message_ids("K")
        probe.close()
        first.stop()
        stack.pop_all()
    if len(ids) != n:
        raise SystemExit(f"(d): {len(ids)} messages stored for {n} ACKed")
    t0 = time.monotonic()
    replay(ids, cwd, {k: v for k, v in first.env.items() if k != "PARCOURS_ROUTES"})
    row.notes["replay_rate"] = n / (time.monotonic() - t0)
    log(f"(d) replayed in {time.monotonic() - t0:.1f} s")
    with ExitStack() as stack:
        resumed = time.time()
        second = Engine(base, "home", cwd=cwd)
        stack.callback(second.stop)
        second.wait_ready()
        probe = Probe(f"sqlite:///{second.home / 'parcours.db'}")
        stack.callback(probe.close)
        total = sum(probe.delivery_statuses().values())
        end = wait_until("(d) drain", probe.delivery_statuses, FINAL_DELIVERY, total,
                         timeout, 0.25)
        row.notes["cpu_per_delivery"] = second.cpu() / total
        row.cpu_per_message = second.cpu() / n
        row.deliveries = total
        row.drain_rate = total / (end - resumed)
        row.settled_rate = n / (end - resumed)
        row.failed = probe.message_statuses().get("failed", 0)
        row.notes["dead_deliveries"] = check_deliveries(probe, "K", n, [second.home], n)
    shutil.rmtree(base, ignore_errors=True)
    return row


# -- report ----------------------------------------------------------------------------------


def ratio_cell(value: float, base: float, goal: str | None) -> tuple[str, str, str]:
    """The ratio, and the issue's goal for it with whether it is met, if it has one."""
    if math.isnan(value) or not base or math.isnan(base):
        return "", "", ""
    r = value / base
    if not goal:
        return f"{r:.2f}×", "", ""
    op, target = GOALS[goal]
    met = r >= target if op == ">=" else r <= target
    return f"{r:.2f}×", f"{op.replace('>=', '≥').replace('<=', '≤')} {target}×", \
        "yes" if met else "**no**"


def report(base_rate: float, base_cpu: float, parse: float, rows: list[Row]) -> str:
    lines = ["| row | figure | value | ratio to (a); CPU: to hl7.parse | goal | met |",
             "|---|---|---:|---:|---|---|",
             f"| (a) python-hl7 MLLP server, parse + create_ack | msg/s | {base_rate:,.0f} | "
             "1.00× | baseline | |",
             f"| (a) | server CPU µs/msg | {base_cpu * 1e6:,.0f} | | | |",
             f"| hl7.parse, same messages, this process | CPU µs/msg | {parse * 1e6:,.0f} | "
             "1.00× | baseline of CPU | |"]

    def add(label: str, figure: str, value: str, cells: tuple[str, str, str] = ("", "", "")
            ) -> None:
        lines.append(f"| {label} | {figure} | {value} | {' | '.join(cells)} |")

    one_proc_scaled = next((r for r in rows if r.label.startswith("(e)")
                            and r.notes.get("processes") == 1), None)
    for r in rows:
        if r.label.startswith("(d)"):
            add(r.label, "drain deliveries/s", f"{r.drain_rate:,.0f}",
                ratio_cell(r.drain_rate, base_rate, "drain"))
            add(r.label, "messages settled/s during the drain", f"{r.settled_rate:,.0f}",
                ratio_cell(r.settled_rate, base_rate, None))
            add(r.label, "engine CPU µs/message (drain)", f"{r.cpu_per_message * 1e6:,.0f}",
                ratio_cell(r.cpu_per_message, parse, None))
            add(r.label, "engine CPU µs/delivery", f"{r.notes['cpu_per_delivery'] * 1e6:,.0f}")
            add(r.label, "(info) ACK msg/s with no routes",
                f"{r.notes['intake_no_routes_ack_rate']:,.0f}")
            add(r.label, "(info) parcours replay msg/s", f"{r.notes['replay_rate']:,.0f}")
            continue
        settled_goal = "one_patient" if r.label.startswith("(c)") else (
            "settled" if r.label.startswith("(b)") else None)
        add(r.label, "ACK msg/s while routing", f"{r.ack_rate:,.0f}",
            ratio_cell(r.ack_rate, base_rate, "ack" if r.label.startswith("(b)") else None))
        add(r.label, "settled msg/s end to end", f"{r.settled_rate:,.0f}",
            ratio_cell(r.settled_rate, base_rate, settled_goal))
        add(r.label, "engine CPU µs/msg", f"{r.cpu_per_message * 1e6:,.0f}",
            ratio_cell(r.cpu_per_message, parse, "cpu" if r.label.startswith("(b)") else None))
        if r.stages is None:
            add(r.label, f"CPU µs/msg by stage ({STAGE_METRIC})", "n/a")
        else:
            for stage, cpu in r.stages.items():
                add(r.label, f"stage {stage} CPU µs/msg", f"{cpu * 1e6:,.0f}")
        if r.failed or r.notes.get("dead_deliveries"):
            add(r.label, "messages failed / dead deliveries",
                f"{r.failed} / {r.notes.get('dead_deliveries', 0)}")
        if r.label.startswith("(e)"):
            add(r.label, f"partitions owned ({OWNED_METRIC})",
                "n/a" if r.owned is None else " / ".join(
                    "?" if math.isnan(v) else f"{v:.0f}" for v in r.owned),
                spread_cell(r.owned))
            if one_proc_scaled is not None and r is not one_proc_scaled:
                n = r.notes["processes"]
                add(r.label, f"settled, {n} processes vs 1 process (e)", "",
                    ratio_cell(r.settled_rate, one_proc_scaled.settled_rate,
                               "scaled_2" if n == 2 else None))
                cpu = r.cpu_per_message / one_proc_scaled.cpu_per_message - 1
                add(r.label, "CPU/msg vs 1 process (e)", f"{cpu:+.0%}", (
                    "", "within ±15 %", "yes" if abs(cpu) <= 0.15 else "**no**"))
    return "\n".join(lines)


def spread_cell(counts: list[float] | None) -> tuple[str, str, str]:
    """Each of N processes owns ⌈P/N⌉ or ⌊P/N⌋ partitions (issue #12)."""
    if not counts or any(math.isnan(c) for c in counts):
        return "", "", ""
    p, k = sum(counts), len(counts)
    ok = all(c in (math.floor(p / k), math.ceil(p / k)) for c in counts)
    return f"P={p:.0f}", "⌈P/N⌉ or ⌊P/N⌋ each", "yes" if ok else "**no**"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=4000, help="per row [4000]")
    ap.add_argument("--backlog", type=int, default=50000, help="messages of row (d) [50000]")
    ap.add_argument("--connections", type=int, default=8, help="[8]")
    ap.add_argument("--patients", type=int, default=1000, help="distinct patients [1000]")
    ap.add_argument("--rows", nargs="+", default=["a", "b", "c", "d"],
                    choices=["a", "b", "c", "d", "e"],
                    help="rows to run [a b c d]; (a) always runs (every ratio needs it)")
    ap.add_argument("--scaled", type=int, nargs="*", metavar="N",
                    help="also run (e) with these numbers of engine processes [1 2 3]")
    ap.add_argument("--timeout", type=float, default=1800,
                    help="seconds a row may take to settle [1800]")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    if not console_script().exists():
        raise SystemExit(f"{console_script()} not found: run from the venv `make run` uses")
    scaled = [] if args.scaled is None and "e" not in args.rows else (args.scaled or [1, 2, 3])
    started = datetime.now(UTC)
    header = (f"# {machine()}; {started:%Y-%m-%d %H:%M} UTC; load average {load_average()}; "
              f"ORU^R01 with 12 OBX, {len(oru('X'))} bytes; {args.connections} connections")
    print(header, file=sys.stderr)
    payloads = [oru(f"B{i:06d}", i % args.patients) for i in range(args.messages)]
    parse = parse_cpu(payloads)
    log(f"hl7.parse: {parse * 1e6:,.0f} µs CPU a message")
    base_rate, base_cpu = baseline(payloads, args.connections)
    log(f"(a) python-hl7: {base_rate:,.0f} msg/s")
    rows: list[Row] = []
    if "b" in args.rows:
        rows.append(engine_row(f"(b) make run, SQLite, {args.patients} patients", payloads, "B",
                               args.connections, args.timeout))
        log(f"(b): {rows[-1].settled_rate:,.0f} msg/s settled")
    if "c" in args.rows:
        one = [oru(f"C{i:06d}", 0) for i in range(args.messages)]
        rows.append(engine_row("(c) make run, SQLite, one patient", one, "C",
                               args.connections, args.timeout))
        log(f"(c): {rows[-1].settled_rate:,.0f} msg/s settled")
    if "d" in args.rows:
        rows.append(backlog_row(args.backlog, args.patients, args.connections, args.timeout))
        log(f"(d): {rows[-1].drain_rate:,.0f} deliveries/s")
    for k in scaled:
        rows.append(engine_row(f"(e) PostgreSQL + RabbitMQ, {k} process{'es' if k > 1 else ''}",
                               payloads, "B", args.connections, args.timeout, scaled=k))
        log(f"(e) {k}: {rows[-1].settled_rate:,.0f} msg/s settled")
    print(header)
    print(report(base_rate, base_cpu, parse, rows))
    print(f"\nload average at the end: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(finite({
            "machine": machine(), "started": started.isoformat(),
            "load_average_end": load_average(), "args": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "baseline": {"msg_per_s": base_rate, "server_cpu_per_message": base_cpu},
            "hl7_parse_cpu_per_message": parse, "goals": GOALS,
            "rows": [asdict(r) | {"ratios": ratios(r, base_rate, parse)} for r in rows],
        }), indent=2))


def ratios(r: Row, base_rate: float, parse: float) -> dict[str, float]:
    """The row's figures over (a)'s msg/s, and its CPU over hl7.parse, as in the table."""
    return {"ack": r.ack_rate / base_rate, "settled": r.settled_rate / base_rate,
            "drain": r.drain_rate / base_rate, "cpu_vs_hl7_parse": r.cpu_per_message / parse}


def finite(value: Any) -> Any:
    """NaN (a figure not measured) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
