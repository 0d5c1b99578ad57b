"""A folder channel: files dropped by a laboratory or a document system.

Exactly-once pickup across restarts rests on two facts: the engine records a file (name +
sha256) in the same transaction as its messages, and the file is moved only after that
commit. A crash between the two leaves a file whose record exists; the next scan sees the
record and only finishes the move.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .types import ChannelState

log = logging.getLogger("parcours.channel.folder")

# Names a sender uses while still writing (atomic-rename convention): never taken.
_PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".filepart", ".crdownload", ".swp")


@dataclass(frozen=True)
class FileOutcome:
    status: str  # "archived" | "error"
    reason: str | None = None
    message_count: int = 0


# process(name, data, sha256) -> outcome; the engine stores before returning.
ProcessFile = Callable[[str, bytes, str], Awaitable[FileOutcome]]


@dataclass
class FolderSettings:
    path: Path
    patterns: tuple[str, ...] = ("*.hl7", "*.xml")
    poll_interval: float = 1.0
    settle_seconds: float = 1.0
    archive: Path | None = None
    error: Path | None = None

    def __post_init__(self) -> None:
        self.archive = self.archive or self.path / "archive"
        self.error = self.error or self.path / "error"


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


@dataclass
class FolderStats:
    files_taken: int = 0
    files_archived: int = 0
    files_failed: int = 0
    files_resumed: int = 0  # moved after a crash, without reprocessing
    last_scan: float = 0.0
    seen: dict[str, _Seen] = field(default_factory=dict)


class FolderChannel:
    def __init__(self, name: str, settings: FolderSettings, process: ProcessFile) -> None:
        self.name = name
        self.settings = settings
        self._process = process
        self.state = ChannelState(name, "folder")
        self.stats = FolderStats()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        for d in (s.path, s.archive, s.error):
            assert d is not None
            d.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name=f"folder:{self.name}")
        self.state.state, self.state.detail = "polling", str(s.path)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task:
            await self._task
        self.state.state = "stopped"

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.scan_once()
            except Exception:  # a broken scan must not end the channel
                log.exception("folder scan failed", extra={"channel": self.name})
                self.state.detail = "scan failed; see log"
            try:
                await asyncio.wait_for(self._stopping.wait(), self.settings.poll_interval)
            except TimeoutError:
                pass

    def _candidates(self) -> list[Path]:
        s = self.settings
        out = []
        try:
            entries = list(os.scandir(s.path))
        except FileNotFoundError:
            s.path.mkdir(parents=True, exist_ok=True)
            return []
        for e in entries:
            if not e.is_file() or e.name.startswith(".") or e.name.endswith(_PARTIAL_SUFFIXES):
                continue
            if e.name.endswith(".reason"):
                continue
            if any(fnmatch.fnmatch(e.name.lower(), p.lower()) for p in s.patterns):
                out.append(Path(e.path))
        return sorted(out, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def _settled(self, path: Path, now: float) -> bool:
        """Stable size and mtime for settle_seconds: the writer is done with it."""
        try:
            st = path.stat()
        except FileNotFoundError:
            self.stats.seen.pop(path.name, None)
            return False
        prev = self.stats.seen.get(path.name)
        if prev is None or prev.size != st.st_size or prev.mtime_ns != st.st_mtime_ns:
            self.stats.seen[path.name] = _Seen(st.st_size, st.st_mtime_ns, now)
            return self.settings.settle_seconds == 0
        return now - prev.since >= self.settings.settle_seconds

    async def scan_once(self) -> int:
        """Take every settled file once; returns how many were handled."""
        now = time.monotonic()
        self.stats.last_scan = time.time()
        handled = 0
        for path in self._candidates():
            if self._stopping.is_set():
                break
            if not self._settled(path, now):
                continue
            await self._take(path)
            self.stats.seen.pop(path.name, None)
            handled += 1
        return handled

    async def _take(self, path: Path) -> None:
        s = self.settings
        data = await asyncio.to_thread(path.read_bytes)
        sha = hashlib.sha256(data).hexdigest()
        self.stats.files_taken += 1
        outcome = await self._process(path.name, data, sha)
        if outcome.status == "archived":
            assert s.archive is not None
            self._move(path, s.archive)
            self.stats.files_archived += 1
        else:
            assert s.error is not None
            target = self._move(path, s.error)
            reason_file = target.with_name(target.name + ".reason")
            reason_file.write_text((outcome.reason or "unknown error") + "\n", encoding="utf-8")
            self.stats.files_failed += 1
        log.info(
            "file processed",
            extra={"channel": self.name, "file": path.name, "status": outcome.status,
                   "messages": outcome.message_count},
        )

    @staticmethod
    def _move(path: Path, folder: Path) -> Path:
        target = folder / path.name
        if target.exists():  # same name dropped twice: keep both
            stem = f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
            target = folder / f"{stem}{path.suffix}"
            n = 1
            while target.exists():
                target = folder / f"{stem}.{n}{path.suffix}"
                n += 1
        os.replace(path, target)
        return target
