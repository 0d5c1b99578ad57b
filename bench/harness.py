"""What the bench scripts share: the test message, the MLLP load client, servers and engines in
their own processes, CPU read from /proc, a fresh PostgreSQL database and RabbitMQ vhost.

One copy, so that every script measures with the same load and the same message and their
rows can be compared. Nothing here imports the engine: the scripts measure `parcours serve`
from outside, as a user runs it, whatever the engine's inner layout is at the time.

    .venv/bin/python bench/harness.py --serve hl7 --port 2575   # python-hl7's server alone
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VT, FS, CR = b"\x0b", b"\x1c", b"\r"  # MLLP framing (HL7 Transport Specification, MLLP r2)

PG_ADMIN_URL = os.environ.get("PARCOURS_BENCH_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP_BASE = os.environ.get("PARCOURS_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")

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


def nir(patient: int) -> str:
    """A well-formed test NIR for patient number `patient`: 13 digits and the key 97 - n mod 97
    (the NIR key of the INS, ANS référentiel INS)."""
    body = f"18001751{patient % 100000:05d}"
    return f"{body}{97 - int(body) % 97:02d}"


def oru(control_id: str, patient: int | None = None) -> bytes:
    """A realistic lab result: MSH, PID with INS and local id, PV1, ORC, OBR, 12 OBX, NTE.

    Without `patient`, always the same patient (the message bench/intake.py has always sent);
    with it, patient number `patient`: its own local id (the patient key) and its own INS.
    """
    local, ins = ("0123456789", "180017512345678") if patient is None else (
        f"LAB{patient:07d}", nir(patient))
    segs = [
        f"MSH|^~\\&|LABO-SIL|BIO-PARIS15|PARCOURS|ARS-IDF|20261125101500+0100||ORU^R01^ORU_R01|"
        f"{control_id}|P|2.5.1|||||FRA|UNICODE UTF-8",
        f"PID|1||{local}^^^BIO-PARIS15&1.2.250.1.71.4.2.1&ISO^PI~"
        f"{ins}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||"
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


# -- python-hl7's server: the usual baseline ------------------------------------------------


async def serve_python_hl7(port: int) -> None:
    """python-hl7's asyncio MLLP server: hl7.parse of every message, message.create_ack()."""
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


# -- ports and processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
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


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM (the engine's orderly stop), SIGKILL only if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (proc(5): fields 14 and 15)."""
    fields = _stat_fields(pid)
    if fields is None:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and of every process it spawned, live or already reaped.

    utime + stime + cutime + cstime (proc(5) fields 14–17) of the process and of each live
    descendant: a child that exits and is waited for moves its time into its parent's cutime,
    so the sum does not jump when workers come and go, and a delta over a run counts worker
    processes the engine started or stopped during it.
    """
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(f) for f in fields[11:15])
    if pid not in times:
        return float("nan")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0)
        todo += [c for c, parent in parents.items() if parent == p]
    return total / os.sysconf("SC_CLK_TCK")


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


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# -- the load client (the same for every server) -------------------------------------------


@dataclass
class Load:
    start: float  # wall clock (time.time()) of the first send
    seconds: float  # first send to last ACK
    latencies: list[float]  # write to complete ACK frame, seconds


async def one_connection(port: int, payloads: list[bytes], latencies: list[float]) -> None:
    """One sender in original mode: a message, then wait for its ACK (HL7 v2.5.1 §2.9.2)."""
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


async def load(ports: int | list[int], connections: int, payloads: list[bytes]) -> Load:
    """`connections` senders, message i on connection i % connections; connection c goes to
    ports[c % len(ports)] (several engine processes behind no balancer)."""
    targets = [ports] if isinstance(ports, int) else ports
    parts = [payloads[i::connections] for i in range(connections)]
    latencies: list[float] = []
    start, t0 = time.time(), time.perf_counter()
    await asyncio.gather(*(one_connection(targets[c % len(targets)], part, latencies)
                           for c, part in enumerate(parts) if part))
    return Load(start, time.perf_counter() - t0, latencies)


# -- `parcours serve` in its own process --------------------------------------------------------


def console_script() -> Path:
    """The `parcours` command of the venv this script runs from, as `make run` calls it."""
    return Path(sys.executable).parent / "parcours"


class Engine:
    """`parcours serve` in its own process, with its own PARCOURS_HOME and ports.

    The environment is the caller's minus every PARCOURS_* variable, plus PARCOURS_HOME,
    PARCOURS_MLLP_PORT, PARCOURS_HTTP_PORT and `env`; PYTHONPATH starts with this checkout so
    that the engine measured is the one beside this script, whichever checkout the venv was
    installed from.
    """

    def __init__(self, base: Path, name: str, *, env: dict[str, str] | None = None,
                 command: list[str] | None = None, cwd: Path = ROOT) -> None:
        self.name = name
        self.home = base / name
        self.home.mkdir(parents=True, exist_ok=True)
        self.mllp_port, self.http_port = free_port(), free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("PARCOURS_")}
        full["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])])
        full.update({"PARCOURS_HOME": str(self.home), "PARCOURS_MLLP_PORT": str(self.mllp_port),
                     "PARCOURS_HTTP_PORT": str(self.http_port)})
        full.update(env or {})
        self.env = full
        self.log_path = base / f"{name}.log"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(command or [str(console_script()), "serve"], cwd=cwd,
                                     env=full, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """/healthz answers 200 (the MLLP port opens earlier, before the HTTP API)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}; "
                                 f"log {self.log_path}:\n{self.tail()}")
            try:
                url = f"http://127.0.0.1:{self.http_port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"{self.name} not ready after {timeout} s; log {self.log_path}")

    def tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def metrics(self) -> str:
        """The Prometheus text of /metrics, or "" when it does not answer."""
        try:
            url = f"http://127.0.0.1:{self.http_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as r:
                return str(r.read().decode("utf-8", "replace"))
        except OSError:
            return ""

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric `name` in Prometheus text exposition format: (labels, value)."""
    found = []
    for m in _SAMPLE.finditer(text):
        if m.group(1) == name:
            found.append((dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return found


# -- PostgreSQL and RabbitMQ, fresh for each run ---------------------------------------------


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


def main() -> None:
    ap = argparse.ArgumentParser(description="run a baseline server alone")
    ap.add_argument("--serve", choices=["hl7"], required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    try:
        asyncio.run(serve_python_hl7(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
