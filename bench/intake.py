"""Intake benchmark (issue #2): messages/s and ACK latency, three servers, one load client.

    .venv/bin/python bench/intake.py [--messages 5000] [--connections 1 8]
                                     [--store-url postgresql+psycopg://postgres@127.0.0.1/bench]

(a) bare    a bare asyncio MLLP server answering a fixed ACK (the ceiling for Python + asyncio)
(b) hl7     python-hl7's MLLP server (hl7.mllp.start_hl7_server): parses every message with
            hl7.parse and answers message.create_ack()
(c) parcours  `parcours serve`: MSH read, ACK decided, message committed durably (SQLite WAL,
            synchronous=FULL, group commit) before the ACK goes; with --store-url also on that
            store

Two more rows take Parcours apart, to show where its time goes (not run by default):
listener  Parcours' MLLP listener (connectors/mllp) answering a fixed ACK, nothing stored
decide    the listener plus the intake decision (MSH read, checks, ACK built), nothing stored

Every server runs in its own process; this process is the load client, the same for all:
each connection sends one ORU^R01 (12 OBX) at a time and waits for its ACK before the next,
as HL7 senders do (original mode). Latency is from the write to the complete ACK frame.
"server CPU" is the CPU time (user + system, all threads) the server process used during the
measured run, per message, read from /proc/<pid>/stat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from harness import (  # bench/harness.py: the message, load and /proc reading all scripts use
    CR,
    FS,
    OBX,
    VT,
    free_port,
    load,
    machine,
    oru,
    process_cpu,
    serve_python_hl7,
    wait_port,
)

ROOT = Path(__file__).resolve().parent.parent
SERVED_HERE = ("bare", "hl7", "listener", "decide")  # run by this script with --serve
__all__ = ["OBX", "machine", "oru"]  # bench/ack.py and bench/store_floor.py import them here

# -- servers (a) and (b), each run with `bench/intake.py --serve KIND --port P` ---------------

FIXED_ACK = (
    b"MSH|^~\\&|PARCOURS|ARS-IDF|LABO-SIL|BIO-PARIS15|20261125101500||ACK^R01^ACK|BENCH|P|2.5.1"
    b"\rMSA|AA|BENCH\r"
)


async def serve_bare(port: int) -> None:
    reply = VT + FIXED_ACK + FS + CR

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(FS + CR)
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# -- launching servers ---------------------------------------------------------------------


class Server:
    def __init__(self, kind: str, store_url: str | None = None, synchronous: str = "") -> None:
        self.kind = kind
        self.store_url = store_url
        self.synchronous = synchronous  # PARCOURS_SQLITE_SYNCHRONOUS for an SQLite engine
        self.port = free_port()
        self.tmp: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        if self.kind == "bare":
            return "(a) bare asyncio, fixed ACK"
        if self.kind == "hl7":
            return "(b) python-hl7 parse + create_ack"
        if self.kind == "listener":
            return "(c1) Parcours listener, fixed ACK, no store"
        if self.kind == "decide":
            return "(c2) Parcours listener + intake decision, no store"
        store = "SQLite" if not self.store_url else self.store_url.split(":", 1)[0].split("+")[0]
        if self.synchronous:
            return f"(c3) Parcours intake, SQLite synchronous={self.synchronous} (not durable)"
        return f"(c) Parcours intake, durable ({store})"

    def __enter__(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARCOURS_")}
        if self.synchronous:
            env["PARCOURS_SQLITE_SYNCHRONOUS"] = self.synchronous
        if self.kind in SERVED_HERE:
            cmd = [sys.executable, __file__, "--serve", self.kind, "--port", str(self.port)]
        else:
            self.tmp = tempfile.mkdtemp(prefix="parcours-bench-")
            routes = Path(self.tmp) / "routes.yaml"
            routes.write_text(
                "version: 1\nchannels:\n  main:\n    type: mllp\n    host: 127.0.0.1\n"
                f"    port: {self.port}\ndestinations: {{}}\nroutes: []\n"
            )
            http = free_port()
            cmd = [sys.executable, "-c", "from engine.cli.main import main; main()", "serve",
                   "--home", self.tmp, "--host", "127.0.0.1", "--http-port", str(http),
                   "--routes", str(routes), "--log-level", "WARNING"]
            if self.store_url:
                cmd += ["--store-url", self.store_url]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        wait_port(self.port, self.proc)
        if self.kind == "parcours":  # the port opens before the HTTP API: wait for healthz
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1):
                        break
                except OSError:
                    time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


async def serve_listener(port: int, decide: bool) -> None:
    sys.path.insert(0, str(ROOT))
    from connectors.mllp.server import MLLPServer, Peer
    from engine.intake.handler import Intake, IntakePolicy

    loop = asyncio.get_running_loop()
    intake = Intake(None)  # type: ignore[arg-type]  # decide() never touches the committer
    policy = IntakePolicy(channel="main")

    def handler(payload: bytes, peer: Peer) -> asyncio.Future[bytes | None]:
        reply: asyncio.Future[bytes | None] = loop.create_future()
        reply.set_result(intake.decide(payload, policy).arrival.ack if decide else FIXED_ACK)
        return reply

    server = MLLPServer(handler, host="127.0.0.1", port=port, name="bench")
    await server.start()
    await asyncio.Event().wait()


# -- the load client (the same for every server) -------------------------------------------


@dataclass
class Result:
    server: str
    connections: int
    messages: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.messages * 1e6

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000


def run(server: Server, connections: int, n: int, run_id: str) -> Result:
    warmup = [oru(f"W{run_id}{connections}-{i}") for i in range(min(500, n // 5 + 1))]
    payloads = [oru(f"B{run_id}{connections}-{i}") for i in range(n)]
    asyncio.run(load(server.port, connections, warmup))
    assert server.proc is not None
    before = process_cpu(server.proc.pid)
    done = asyncio.run(load(server.port, connections, payloads))
    used = process_cpu(server.proc.pid) - before
    return Result(server.label, connections, n, done.seconds, done.latencies, used)


# -- report --------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    lines = ["| server | conns | messages | msg/s | p50 ACK ms | p99 ACK ms | server CPU µs/msg |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.server} | {r.connections} | {r.messages} | {r.rate:,.0f} | "
                     f"{r.pct(0.50):.2f} | {r.pct(0.99):.2f} | {r.cpu_us:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000, help="per run [5000]")
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 8], help="[1 8]")
    ap.add_argument("--store-url", help="also run Parcours on this store (PostgreSQL URL)")
    ap.add_argument("--servers", nargs="+", default=["bare", "hl7", "parcours"],
                    choices=["bare", "hl7", "listener", "decide", "parcours"],
                    help="[bare hl7 parcours]")
    ap.add_argument("--sqlite-normal", action="store_true",
                    help="also run Parcours on SQLite with synchronous=NORMAL (no fsync per "
                         "commit; loses the last commits on power loss): shows what the fsync "
                         "costs")
    ap.add_argument("--serve", choices=SERVED_HERE, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve = {
            "bare": lambda: serve_bare(args.port),
            "hl7": lambda: serve_python_hl7(args.port),
            "listener": lambda: serve_listener(args.port, decide=False),
            "decide": lambda: serve_listener(args.port, decide=True),
        }[args.serve]
        try:
            asyncio.run(serve())
        except KeyboardInterrupt:
            pass
        return

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"# {machine()}; {date.today().isoformat()}", file=sys.stderr)
    print(f"# ORU^R01 with {len(OBX)} OBX, {len(oru('X'))} bytes", file=sys.stderr)
    servers = [Server(k) for k in args.servers]
    if args.sqlite_normal and "parcours" in args.servers:
        servers.append(Server("parcours", synchronous="NORMAL"))
    if args.store_url and "parcours" in args.servers:
        servers.append(Server("parcours", args.store_url))
    run_id = f"{int(time.time()) % 100000}"
    results: list[Result] = []
    for server in servers:
        with server:
            for c in args.connections:
                r = run(server, c, args.messages, run_id)
                print(f"  {r.server:<40} {c:>2} conn: {r.rate:8,.0f} msg/s  "
                      f"p50 {r.pct(0.5):6.2f} ms  p99 {r.pct(0.99):6.2f} ms  "
                      f"CPU {r.cpu_us:5.0f} µs/msg", file=sys.stderr)
                results.append(r)
    print(table(results))
    base = {r.connections: r for r in results if r.server.startswith("(a)")}
    for r in results:
        if r.server.startswith("(c") and r.connections in base:
            ratio = r.rate / base[r.connections].rate
            goal = "  (goal ≥ 40 %)" if r.connections == 8 and r.server.startswith("(c)") else ""
            print(f"\n{r.server} / (a) with {r.connections} connection(s): {ratio:.0%}{goal}")


if __name__ == "__main__":
    main()
