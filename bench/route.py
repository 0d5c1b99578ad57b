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
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("PARCOURS_BENCH_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP_BASE = os.environ.get("PARCOURS_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")
VT, FS, CR = b"\x0b", b"\x1c", b"\r"


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


# -- services ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def pg_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    name = f"parcours_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def rabbit_vhost() -> Iterator[str]:
    if shutil.which("rabbitmqctl") is None:
        raise SystemExit("rabbitmqctl is needed to give each run its own vhost")
    name = f"parcours_bench_{uuid.uuid4().hex[:10]}"

    def ctl(*args: str) -> None:
        for _ in range(10):  # the broker may be restarting (another run's stop_app)
            res = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                                 timeout=120)
            if res.returncode == 0:
                return
            time.sleep(3)
        raise SystemExit(f"rabbitmqctl {' '.join(args)}: {res.stderr or res.stdout}")

    ctl("add_vhost", name)
    try:
        ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"{AMQP_BASE}/{name}"
    finally:
        ctl("delete_vhost", name)


class Engine:
    """`parcours serve` in its own process."""

    def __init__(self, base: Path, name: str, routes_file: Path, store_url: str | None,
                 broker_url: str | None) -> None:
        self.name = name
        self.home = base / name
        self.home.mkdir(parents=True, exist_ok=True)
        self.mllp_port, self.http_port = free_port(), free_port()
        self.store_url = store_url or f"sqlite:///{self.home / 'parcours.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARCOURS_")}
        env.update({"PARCOURS_HOME": str(self.home), "PARCOURS_HOST": "127.0.0.1",
                    "PARCOURS_MLLP_PORT": str(self.mllp_port),
                    "PARCOURS_HTTP_PORT": str(self.http_port),
                    "PARCOURS_STORE_URL": self.store_url, "PARCOURS_ROUTES": str(routes_file),
                    "PARCOURS_LOG_LEVEL": "WARNING"})
        if broker_url:
            env["PARCOURS_BROKER_URL"] = broker_url
        self.log = (base / f"{name}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from engine.cli import main; main()", "serve"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}")
            try:
                url = f"http://127.0.0.1:{self.http_port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"{self.name} not ready after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- load ------------------------------------------------------------------------------------


async def one_connection(port: int, payloads: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buf = b""
    try:
        for p in payloads:
            writer.write(VT + p + FS + CR)
            await writer.drain()
            while FS + CR not in buf:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("engine closed the connection")
                buf += data
            frame, _, buf = buf.partition(FS + CR)
            if b"MSA|AA|" not in frame:
                raise RuntimeError(f"not accepted: {frame!r}")
    finally:
        writer.close()


async def load(ports: list[int], connections: int, payloads: list[bytes]) -> float:
    """Send everything; returns the wall-clock time of the first send."""
    per: list[list[bytes]] = [[] for _ in range(connections)]
    for i, p in enumerate(payloads):
        per[i % connections].append(p)
    start = time.time()
    await asyncio.gather(*(one_connection(ports[c % len(ports)], per[c])
                           for c in range(connections) if per[c]))
    return start


def counts(store: Any) -> tuple[int, int]:
    from sqlalchemy import func, select

    from engine.models import messages

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

    from engine.models import deliveries, messages

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
            engines.append(Engine(base, f"e{i + 1}", routes_file, store_url, broker_url))
            engines[-1].wait_ready()
        store = create_engine(engines[0].store_url)
        stack.callback(store.dispose)
        ports = [e.mllp_port for e in engines]
        warm = [adt(f"W{i % 20}", f"W-{i}") for i in range(100)]
        asyncio.run(load(ports, connections, warm))
        wait_done(store, len(warm), 120)
        payloads = [adt(f"P{i % patients:05d}", f"M-{i}") for i in range(n)]
        t_send = time.monotonic()
        start = asyncio.run(load(ports, connections, payloads))
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
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, {date.today().isoformat()}")


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
