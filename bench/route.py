"""Routing benchmark (issue #3): end-to-end messages/s, MLLP in → stored → routed → file written.

    .venv/bin/python bench/route.py [--messages 3000] [--connections 8] [--patients 300]
                                    [--setups embedded pg-rabbit-1 pg-rabbit-2] [--repeat 1]

(a) embedded      one `parcours serve`: SQLite store (WAL, synchronous=FULL), in-process bus
(b) pg-rabbit-1   one `parcours serve` on PostgreSQL + RabbitMQ
(c) pg-rabbit-2   two `parcours serve` processes sharing PostgreSQL + RabbitMQ, the load spread
                  over both MLLP ports (connection c goes to process c % 2)

Every engine runs in its own process with one route (ADT → a file destination: temp file,
fsync, rename, fsync of the folder). This process is the load: `--connections` connections,
each sending one ADT^A08 at a time and waiting for its ACK (original mode), patients spread
over the connections. A warm-up of 100 messages runs first. Timed from the first send to the
last delivery written (max(delivered_at) in the store); the run ends when every message is
`done`, and the file count is checked. The PostgreSQL database and the RabbitMQ vhost are
created for each run (PARCOURS_BENCH_PG_URL: admin URL; rabbitmqctl for the vhost). With
--repeat, the setups run in turn (round robin) and the median run of each is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from harness import Engine, load, pg_database, rabbit_vhost  # bench/harness.py
from harness import machine as machine_line

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def adt(patient: str, control_id: str) -> bytes:
    return ("\r".join([
        f"MSH|^~\\&|HIS|CHU-X|PARCOURS|ARS-IDF|20261125120000||ADT^A08^ADT_A01|{control_id}|"
        "P|2.5.1",
        "EVN|A08|20261125120000",
        f"PID|1||{patient}^^^CHU-X&1.2.3&ISO^PI||DOE^{patient}^^^^^L||19800101|M|||"
        "12 RUE DE LA PAIX^^PARIS^^75002^FRA",
        "PV1|1|I|CARDIO^101^1^CHU-X||||12345^MARTIN^PAUL|||CAR||||||||I|V0001",
    ]) + "\r").encode()


def routes(out: Path) -> str:
    return f"""\
version: 1
channels:
  main:
    type: mllp
    host: 127.0.0.1
    port: ${{PARCOURS_MLLP_PORT}}
destinations:
  files: {{type: file, path: "{out}", filename: "{{message_id}}_{{route}}.{{ext}}"}}
routes:
  - name: adt
    when: {{message_type: ADT}}
    to: [files]
"""


# -- load ------------------------------------------------------------------------------------


def counts(store: Any) -> tuple[int, int]:
    from sqlalchemy import func, select

    from engine.store.models import messages

    with store.connect() as conn:
        rows = dict(conn.execute(select(messages.c.status, func.count())
                                 .group_by(messages.c.status)).all())
    return int(rows.get("done", 0)), int(sum(rows.values()))


def wait_done(store: Any, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _total = counts(store)
        if done >= expected:
            return
        time.sleep(0.02)
    raise SystemExit(f"only {counts(store)[0]} of {expected} messages done after {timeout} s")


@dataclass
class Result:
    setup: str
    messages: int
    connections: int
    intake_s: float
    e2e_s: float
    latency_p50: float
    latency_p95: float

    @property
    def e2e_rate(self) -> float:
        return self.messages / self.e2e_s

    @property
    def intake_rate(self) -> float:
        return self.messages / self.intake_s


def run(setup: str, n: int, connections: int, patients: int) -> Result:
    from sqlalchemy import create_engine, select

    from engine.store.models import deliveries, messages

    base = Path(tempfile.mkdtemp(prefix="parcours-bench-route-"))
    out = base / "out"
    routes_file = base / "routes.yaml"
    routes_file.write_text(routes(out))
    with ExitStack() as stack:
        store_url = broker_url = None
        if setup != "embedded":
            store_url = stack.enter_context(pg_database())
            broker_url = stack.enter_context(rabbit_vhost())
        count = 2 if setup == "pg-rabbit-2" else 1
        engines: list[Engine] = []
        stack.callback(lambda: [e.stop() for e in engines])
        for i in range(count):
            home = base / f"e{i + 1}"
            env = {"PARCOURS_HOST": "127.0.0.1",
                   "PARCOURS_STORE_URL": store_url or f"sqlite:///{home / 'parcours.db'}",
                   "PARCOURS_ROUTES": str(routes_file), "PARCOURS_LOG_LEVEL": "WARNING"}
            if broker_url:
                env["PARCOURS_BROKER_URL"] = broker_url
            engines.append(Engine(base, home.name, env=env, command=[
                sys.executable, "-c", "from engine.cli.main import main; main()", "serve"]))
            engines[-1].wait_ready()
        store = create_engine(engines[0].env["PARCOURS_STORE_URL"])
        stack.callback(store.dispose)
        ports = [e.mllp_port for e in engines]
        warm = [adt(f"W{i % 20}", f"W-{i}") for i in range(100)]
        asyncio.run(load(ports, connections, warm))
        wait_done(store, len(warm), 120)
        payloads = [adt(f"P{i % patients:05d}", f"M-{i}") for i in range(n)]
        t_send = time.monotonic()
        start = asyncio.run(load(ports, connections, payloads)).start
        intake_s = time.monotonic() - t_send
        wait_done(store, len(warm) + n, 600)
        with store.connect() as conn:
            rows = conn.execute(
                select(messages.c.received_at, deliveries.c.delivered_at)
                .join(deliveries, deliveries.c.message_id == messages.c.id)
                .where(messages.c.control_id.like("M-%"))).all()
        files = sum(1 for _ in out.iterdir())
        if files != len(warm) + n or len(rows) != n:
            raise SystemExit(f"{setup}: {files} files, {len(rows)} deliveries for {n} messages")
        end = max(r.delivered_at for r in rows).timestamp()
        lat = sorted((r.delivered_at - r.received_at).total_seconds() for r in rows)
    shutil.rmtree(base, ignore_errors=True)
    return Result(setup, n, connections, intake_s, end - start,
                  lat[len(lat) // 2], lat[int(len(lat) * 0.95)])


def machine() -> str:
    return f"{machine_line()}, {date.today().isoformat()}"


def table(results: list[Result]) -> str:
    lines = ["| setup | messages | connections | end-to-end msg/s | intake (ACK) msg/s "
             "| received→written p50 | p95 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.setup} | {r.messages} | {r.connections} | {r.e2e_rate:,.0f} "
                     f"| {r.intake_rate:,.0f} | {r.latency_p50 * 1000:,.0f} ms "
                     f"| {r.latency_p95 * 1000:,.0f} ms |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=3000, help="per run [3000]")
    ap.add_argument("--connections", type=int, default=8, help="[8]")
    ap.add_argument("--patients", type=int, default=300, help="distinct patients [300]")
    ap.add_argument("--setups", nargs="+", default=["embedded", "pg-rabbit-1", "pg-rabbit-2"],
                    choices=["embedded", "pg-rabbit-1", "pg-rabbit-2"])
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per setup; the median end-to-end run is reported [1]")
    args = ap.parse_args()
    print(machine(), flush=True)
    runs: dict[str, list[Result]] = {s: [] for s in args.setups}
    for _ in range(args.repeat):  # round robin: a busy spell on the machine hits every setup
        for setup in args.setups:
            r = run(setup, args.messages, args.connections, args.patients)
            print(f"  {setup}: {r.e2e_rate:,.0f} msg/s end to end, "
                  f"{r.intake_rate:,.0f} msg/s intake", flush=True)
            runs[setup].append(r)
    results = []
    for setup in args.setups:
        ordered = sorted(runs[setup], key=lambda r: r.e2e_rate)
        results.append(ordered[len(ordered) // 2])
    print(table(results))
    if args.repeat > 1:
        print(f"(median of {args.repeat} runs per setup)")


if __name__ == "__main__":
    main()
