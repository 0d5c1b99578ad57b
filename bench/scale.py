"""Scale-out benchmark (issue #12): 1, 2, 3 engine processes on PostgreSQL + RabbitMQ.

    .venv/bin/python bench/scale.py [--messages 3000] [--connections 9] [--patients 300]
                                    [--processes 1 2 3]

For each N: a fresh PostgreSQL database and RabbitMQ vhost, N `parcours serve` processes
(8 partitions, one route: ADT → a file destination), the load spread over their MLLP ports
(connection c goes to process c % N), each connection sending one ADT^A08 at a time and
waiting for its ACK. Reported per N:
- partitions owned by each process, read from its own /metrics (`parcours_partitions_owned`);
- settled rate: messages / (first send → last delivery written, max(delivered_at));
- engine CPU per message: user + system CPU of all N processes over the run, from /proc;
- takeover (N ≥ 2): SIGKILL the last process, then the time until the survivors' /metrics
  together show all 8 partitions owned again (a lease expires after PARCOURS_LEASE_SECONDS,
  taken at the survivors' next tick).
A warm-up of 100 messages runs before the timed run. See bench/route.py for the helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from route import (  # type: ignore[import-not-found]
    Engine,
    adt,
    load,
    machine,
    pg_database,
    rabbit_vhost,
    routes,
    wait_done,
)

PARTITIONS = 8
OWNED = re.compile(r"^parcours_partitions_owned (\S+)$", re.M)


def owned(e: Engine) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{e.http_port}/metrics", timeout=5) as r:
        m = OWNED.search(r.read().decode())
    return int(float(m.group(1))) if m else -1


def wait_shares(engines: list[Engine], timeout: float = 60.0) -> list[int]:
    n = len(engines)
    deadline = time.monotonic() + timeout
    while True:
        got = [owned(e) for e in engines]
        if sum(got) == PARTITIONS and set(got) <= {PARTITIONS // n, -(-PARTITIONS // n)}:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"partitions not shared after {timeout} s: {got}")
        time.sleep(0.05)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of each process (clock ticks in /proc/<pid>/stat)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class Result:
    processes: int
    messages: int
    shares: list[int]
    settled_s: float
    cpu_s: float
    takeover_s: float | None = None
    survivors: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.settled_s

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s * 1000 / self.messages


def run(n: int, messages: int, connections: int, patients: int) -> Result:
    from sqlalchemy import create_engine, func, select

    from engine.store.models import deliveries
    from engine.store.models import messages as messages_t

    base = Path(tempfile.mkdtemp(prefix="parcours-bench-scale-"))
    out = base / "out"
    routes_file = base / "routes.yaml"
    routes_file.write_text(routes(out))
    with ExitStack() as stack:
        store_url = stack.enter_context(pg_database())
        broker_url = stack.enter_context(rabbit_vhost())
        engines: list[Engine] = []
        stack.callback(lambda: [e.stop() for e in engines])
        for i in range(n):
            engines.append(Engine(base, f"e{i + 1}", env={
                "PARCOURS_HOST": "127.0.0.1", "PARCOURS_STORE_URL": store_url,
                "PARCOURS_BROKER_URL": broker_url, "PARCOURS_ROUTES": str(routes_file),
                "PARCOURS_LOG_LEVEL": "WARNING"}))
        for e in engines:
            e.wait_ready()
        shares = wait_shares(engines)
        store = create_engine(store_url)
        stack.callback(store.dispose)
        ports = [e.mllp_port for e in engines]
        warm = [adt(f"W{i % 20}", f"W-{i}") for i in range(100)]
        asyncio.run(load(ports, connections, warm))
        wait_done(store, len(warm), 120)
        pids = [e.proc.pid for e in engines]
        cpu0 = cpu_seconds(pids)
        payloads = [adt(f"P{i % patients:05d}", f"M-{i}") for i in range(messages)]
        start = asyncio.run(load(ports, connections, payloads)).start
        wait_done(store, len(warm) + messages, 900)
        cpu = cpu_seconds(pids) - cpu0
        with store.connect() as conn:
            end = conn.execute(
                select(func.max(deliveries.c.delivered_at))
                .join(messages_t, deliveries.c.message_id == messages_t.c.id)
                .where(messages_t.c.control_id.like("M-%"))).scalar_one()
        files = sum(1 for _ in out.iterdir())
        if files != len(warm) + messages:
            raise SystemExit(f"{n} processes: {files} files for {len(warm) + messages}")
        result = Result(n, messages, shares, end.timestamp() - start, cpu)
        if n >= 2:
            victim = engines[-1]
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            killed_at = time.monotonic()
            rest = engines[:-1]
            while sum(owned(e) for e in rest) != PARTITIONS:
                if time.monotonic() - killed_at > 60:
                    raise SystemExit("no takeover within 60 s")
                time.sleep(0.02)
            result.takeover_s = time.monotonic() - killed_at
            result.survivors = [owned(e) for e in rest]
    shutil.rmtree(base, ignore_errors=True)
    return result


def table(results: list[Result]) -> str:
    one = results[0] if results and results[0].processes == 1 else None
    lines = ["| processes | partitions owned | settled msg/s | × 1 process | engine CPU ms/msg "
             "| takeover after kill -9 |", "|---:|---|---:|---:|---:|---:|"]
    for r in results:
        ratio = f"{r.rate / one.rate:.2f}×" if one else "—"
        take = (f"{r.takeover_s:.1f} s → {' + '.join(map(str, r.survivors))}"
                if r.takeover_s is not None else "—")
        lines.append(f"| {r.processes} | {' + '.join(map(str, r.shares))} | {r.rate:,.0f} "
                     f"| {ratio} | {r.cpu_ms:.2f} | {take} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=3000, help="per run [3000]")
    ap.add_argument("--connections", type=int, default=9, help="[9]")
    ap.add_argument("--patients", type=int, default=300, help="distinct patients [300]")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3], help="[1 2 3]")
    args = ap.parse_args()
    print(machine(), flush=True)
    results = []
    for n in args.processes:
        r = run(n, args.messages, args.connections, args.patients)
        print(f"  {n} process(es): {r.rate:,.0f} msg/s settled, {r.cpu_ms:.2f} ms CPU/msg",
              flush=True)
        results.append(r)
    print(table(results))


if __name__ == "__main__":
    main()
