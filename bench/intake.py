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
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVED_HERE = ("bare", "hl7", "listener", "decide")  # run by this script with --serve
VT, FS, CR = b"\x0b", b"\x1c", b"\r"

# -- the message ---------------------------------------------------------------------------

OBX = [  # LOINC, name, value, unit, range, flag: a basic metabolic panel plus CBC
    ("2345-7", "Glucose", "5.4", "mmol/L", "3.9-6.1", "N"),
    ("2160-0", "Creatinine", "88", "umol/L", "62-106", "N"),
    ("3094-0", "Urea nitrogen", "6.1", "mmol/L", "2.5-7.5", "N"),
    ("2951-2", "Sodium", "139", "mmol/L", "136-145", "N"),
    ("2823-3", "Potassium", "4.9", "mmol/L", "3.5-5.1", "N"),
    ("2075-0", "Chloride", "101", "mmol/L", "98-107", "N"),
    ("1963-8", "Bicarbonate", "24", "mmol/L", "22-29", "N"),
    ("17861-6", "Calcium", "2.31", "mmol/L", "2.15-2.55", "N"),
    ("718-7", "Hemoglobin", "13.2", "g/dL", "13.0-17.0", "N"),
    ("6690-2", "Leukocytes", "11.8", "10*9/L", "4.0-10.0", "H"),
    ("777-3", "Platelets", "250", "10*9/L", "150-400", "N"),
    ("4544-3", "Hematocrit", "41", "%", "40-50", "N"),
]


def oru(control_id: str) -> bytes:
    """A realistic lab result: MSH, PID with INS and local id, PV1, ORC, OBR, 12 OBX, NTE."""
    segs = [
        f"MSH|^~\\&|LABO-SIL|BIO-PARIS15|PARCOURS|ARS-IDF|20261125101500+0100||ORU^R01^ORU_R01|"
        f"{control_id}|P|2.5.1|||||FRA|UNICODE UTF-8",
        "PID|1||0123456789^^^BIO-PARIS15&1.2.250.1.71.4.2.1&ISO^PI~"
        "180017512345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||"
        "MARTIN^CLAIRE^^^^^L~DUPUIS^CLAIRE^^^^^M||19740312|F|||12 RUE DE VAUGIRARD^^PARIS^^75015"
        "^FRA^H||^PRN^PH^^^^^^^^^0145678901",
        "PV1|1|O|LAB^^^BIO-PARIS15||||10003456789^DURAND^PAUL^^^DR^^^ASIP-SANTE-PS&"
        "1.2.250.1.71.4.2.1&ISO^L^^^RPPS",
        "ORC|RE|CMD-20261125-0042^LABO-SIL|26112500042^LABO-SIL||CM||||20261125081000",
        "OBR|1|CMD-20261125-0042^LABO-SIL|26112500042^LABO-SIL|24323-8^Comprehensive metabolic"
        " panel^LN|||20261125074500|||||||20261125080000||10003456789^DURAND^PAUL^^^DR|||||||"
        "20261125101400||CH|F",
    ]
    for i, (code, name, value, unit, ref, flag) in enumerate(OBX, 1):
        segs.append(
            f"OBX|{i}|NM|{code}^{name}^LN^{i:04d}^{name.upper()}^L||{value}|{unit}^{unit}^UCUM|"
            f"{ref}|{flag}|||F|||20261125074500||AUTOMATE^COBAS-8000|||20261125100000"
        )
    segs.append("NTE|1|L|Prélèvement à jeun. Résultats validés par le biologiste.")
    return ("\r".join(segs) + "\r").encode("utf-8")


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


async def serve_python_hl7(port: int) -> None:
    import hl7.mllp

    async def client(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while True:
                message = await reader.readmessage()  # hl7.parse of the whole message
                writer.writemessage(message.create_ack())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await hl7.mllp.start_hl7_server(client, "127.0.0.1", port, encoding="utf-8")
    async with server:
        await server.serve_forever()


# -- launching servers ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} not ready after {timeout} s")


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
            cmd = [sys.executable, "-c", "from engine.cli import main; main()", "serve",
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
    from engine.intake import Intake, IntakePolicy

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


async def one_connection(port: int, payloads: list[bytes], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    clock = time.perf_counter
    buf = b""
    try:
        for payload in payloads:
            t0 = clock()
            writer.write(VT + payload + FS + CR)
            while True:
                end = buf.find(FS)
                if end >= 0:
                    ack, buf = buf[:end], buf[end + 2 :]
                    break
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                buf += data
            latencies.append(clock() - t0)
            if b"MSA|AA|" not in ack and b"MSA|CA|" not in ack:
                raise RuntimeError(f"not an AA: {ack[:200]!r}")
    finally:
        writer.close()


async def load(port: int, connections: int, payloads: list[bytes]) -> tuple[float, list[float]]:
    parts = [payloads[i::connections] for i in range(connections)]
    latencies: list[float] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(one_connection(port, p, latencies) for p in parts))
    return time.perf_counter() - t0, latencies


def run(server: Server, connections: int, n: int, run_id: str) -> Result:
    warmup = [oru(f"W{run_id}{connections}-{i}") for i in range(min(500, n // 5 + 1))]
    payloads = [oru(f"B{run_id}{connections}-{i}") for i in range(n)]
    asyncio.run(load(server.port, connections, warmup))
    assert server.proc is not None
    before = process_cpu(server.proc.pid)
    seconds, latencies = asyncio.run(load(server.port, connections, payloads))
    used = process_cpu(server.proc.pid) - before
    return Result(server.label, connections, n, seconds, latencies, used)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (proc(5): fields 14 and 15)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- report --------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


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
