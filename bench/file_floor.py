"""What one durable file costs the kernel, beside hl7.parse of the message it carries.

Issue #12 asks for engine CPU per ORU ≤ 0.5× hl7.parse of the same message, end to end with
the shipped routes.yaml — which writes three files per ORU^R01 (archive, lab-normalised,
events). This measures the floor under those three deliveries: the CPU (user + system, this
process) to create, write, make durable and rename one file of the bench's ORU size, in
batches like the file destination's, by the cheapest system-call sequences we know:

- `destination`: `channels/outbound/file.py` itself (`_write_batch`, 32 a batch);
- `fsync each`: open, write, fsync, close, rename, one folder fsync a batch — the bare
  sequence under the destination, no Python around it;
- `syncfs`: the temp files written, one syncfs(2), the renames, one more syncfs — the whole
  file system flushed twice a batch instead of one fsync a file;
- `no sync`: open, write, close, rename, nothing made durable (not a design: the page cache
  only; it shows what the durability costs).

    .venv/bin/python bench/file_floor.py [--files 3200] [--dir DIR]

Prints CPU µs per file and per ORU (× 3), beside hl7.parse CPU µs of the same ORU. Results in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import load_average, machine, oru  # noqa: E402  (bench/harness.py)

from channels.outbound.base import OutboundItem  # noqa: E402
from channels.outbound.file import FileDestination, _fsync_dir  # noqa: E402

BATCH = 32
FILES_PER_ORU = 3  # archive, lab-normalised, events in the shipped routes.yaml
_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Bare:
    """The system calls alone, on one folder, in batches of BATCH."""

    def __init__(self, folder: Path, payload: bytes, mode: str) -> None:
        self.folder = str(folder)
        self.payload = payload
        self.mode = mode
        self.n = 0

    def batch(self) -> None:
        staged = []
        for _ in range(BATCH):
            self.n += 1
            tmp = f"{self.folder}/.{self.n}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, self.payload)
            staged.append((fd, tmp, f"{self.folder}/{self.n}.hl7"))
        if self.mode == "fsync each":
            for fd, _, _ in staged:
                os.fsync(fd)
        elif self.mode == "syncfs":
            _syncfs(staged[0][0])
        for fd, tmp, target in staged:
            os.close(fd)
            os.replace(tmp, target)
        if self.mode == "fsync each":
            _fsync_dir(Path(self.folder))
        elif self.mode == "syncfs":
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                _syncfs(fd)
            finally:
                os.close(fd)


class Destination:
    """The file destination as the engine runs it (the archive's filename pattern)."""

    def __init__(self, folder: Path, payload: bytes) -> None:
        self.dest = FileDestination("archive", {
            "path": str(folder),
            "filename": "{date}/{channel}/{message_id}_{message_type}_{trigger_event}.{ext}"})
        self.payload = payload
        self.n = 0

    def batch(self) -> None:
        items = []
        for _ in range(BATCH):
            self.n += 1
            items.append(OutboundItem(
                self.n, self.n, "lab-results", "archive", self.payload, "application/hl7-v2",
                f"P{self.n % 1000}", 1, f"k{self.n}",
                {"channel": "main", "message_type": "ORU", "trigger_event": "R01",
                 "received_date": "2026-12-02"}))
        outcomes = self.dest._write_batch(items)
        assert all(o is not None and o.kind == "delivered" for o in outcomes)


def cpu_per_file(run: Callable[[], None], files: int) -> float:
    for _ in range(3):  # warm: folders made, caches filled
        run()
    batches = max(1, files // BATCH)
    t0 = time.process_time()
    for _ in range(batches):
        run()
    return (time.process_time() - t0) / (batches * BATCH)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=3200, help="files per variant [3200]")
    ap.add_argument("--dir", default=None,
                    help="where to write (the file system the engine's PARCOURS_HOME is on)")
    args = ap.parse_args()
    import hl7

    payload = oru("FLOOR-1", 1)
    text = payload.decode()
    t0 = time.process_time()
    for _ in range(2000):
        hl7.parse(text)
    parse = (time.process_time() - t0) / 2000
    base = Path(tempfile.mkdtemp(prefix="parcours-file-floor-", dir=args.dir))
    print(f"# {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
          f"{load_average()}; {len(payload)}-byte ORU, batches of {BATCH}, {base}")
    print(f"hl7.parse of that ORU: {parse * 1e6:,.0f} µs CPU; 0.5× is "
          f"{parse * 0.5e6:,.0f} µs for the whole pipeline")
    print("| variant | CPU µs per file | × 3 files per ORU | to hl7.parse |")
    print("|---|---:|---:|---:|")
    try:
        variants: list[tuple[str, Callable[[], None]]] = [
            ("destination (channels/outbound/file.py)", Destination(base / "d", payload).batch)]
        for mode in ("fsync each", "syncfs", "no sync"):
            folder = base / mode.replace(" ", "-")
            folder.mkdir()
            variants.append((mode, Bare(folder, payload, mode).batch))
        for name, run in variants:
            per = cpu_per_file(run, args.files)
            print(f"| {name} | {per * 1e6:,.0f} | {per * FILES_PER_ORU * 1e6:,.0f} | "
                  f"{per * FILES_PER_ORU / parse:.2f}× |")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
