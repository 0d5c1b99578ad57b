"""File destination: write atomically (temp + fsync + rename) under a filename pattern.

The same delivery always lands on the same name, so a retry after a crash overwrites the
same file with the same bytes: the effect happens once.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .base import OutboundItem, Outcome, order_key

DEFAULT_PATTERN = "{date}/{message_id}_{route}.{ext}"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EXT = {"application/json": "json", "application/hl7-v2": "hl7", "application/xml": "xml"}


class FileDestination:
    type = "file"

    def __init__(self, name: str, cfg: dict[str, Any]) -> None:
        self.name = name
        self.root = Path(cfg["path"])
        self.pattern = cfg.get("filename", DEFAULT_PATTERN)
        self.cpu_seconds = 0.0  # CPU of its batches, read by the engine's stage metric

    def filename(self, item: OutboundItem) -> Path:
        h = item.headers
        values = {
            "message_id": item.message_id,
            "delivery_id": item.delivery_id,
            "route": item.route,
            "destination": item.destination,
            "channel": h.get("channel", ""),
            "message_type": h.get("message_type", ""),
            "trigger_event": h.get("trigger_event", ""),
            "control_id": h.get("control_id", ""),
            "date": (h.get("received_date") or datetime.now(UTC).strftime("%Y-%m-%d")),
            "ext": _EXT.get(item.content_type, "dat"),
            "generation": h.get("generation", 0),
        }
        safe = {k: _UNSAFE.sub("_", str(v)) or "_" for k, v in values.items()}
        rel = Path(self.pattern.format(**safe))
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"filename pattern {self.pattern!r} escapes the destination folder")
        return self.root / rel

    async def send(self, item: OutboundItem) -> Outcome:
        try:
            target = self.filename(item)
        except (KeyError, ValueError) as exc:
            return Outcome.dead(f"bad filename pattern: {exc}")
        try:
            await asyncio.to_thread(_write_atomic, target, item.payload, item.delivery_id)
        except OSError as exc:
            return Outcome.retry(f"cannot write {target.name}: {exc.strerror}")
        return Outcome.delivered(response=str(target))

    async def send_batch(self, items: Sequence[OutboundItem]) -> list[Outcome | None]:
        """Write every file, then the fsyncs, then the renames, then one fsync per folder:
        the same durability as `send` for each file, with one folder fsync per folder instead
        of one per file and one thread hand-off for the whole batch."""
        return await asyncio.to_thread(self._write_batch, list(items))

    def _write_batch(self, items: list[OutboundItem]) -> list[Outcome | None]:
        cpu = time.thread_time()
        try:
            return self._write_all(items)
        finally:
            self.cpu_seconds += time.thread_time() - cpu

    def _write_all(self, items: list[OutboundItem]) -> list[Outcome | None]:
        out: list[Outcome | None] = [None] * len(items)
        stopped: set[str] = set()
        staged: list[tuple[int, Path, str, int]] = []  # index, target, temp name, fd
        made: set[Path] = set()  # folders made (or found) in this batch: one mkdir each
        for i, item in enumerate(items):
            key = order_key(item)
            if key in stopped:
                continue
            try:
                target = self.filename(item)
            except (KeyError, ValueError) as exc:
                out[i] = Outcome.dead(f"bad filename pattern: {exc}")
                stopped.add(key)
                continue
            try:
                if target.parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(target.parent)
                fd, tmp = _open_temp(target, item.delivery_id)
            except OSError as exc:
                out[i] = Outcome.retry(f"cannot write {target.name}: {exc.strerror}")
                stopped.add(key)
                continue
            staged.append((i, target, tmp, fd))
            try:
                _write_all(fd, item.payload)
            except OSError as exc:
                out[i] = Outcome.retry(f"cannot write {target.name}: {exc.strerror}")
                stopped.add(key)
        folders: dict[Path, list[int]] = {}
        targets: dict[int, Path] = {}
        for i, target, tmp, fd in staged:
            try:
                if out[i] is None:
                    os.fsync(fd)
            except OSError as exc:
                out[i] = Outcome.retry(f"cannot write {target.name}: {exc.strerror}")
            finally:
                os.close(fd)
            if out[i] is not None:
                _unlink_quietly(tmp)
                continue
            try:
                os.replace(tmp, target)
            except OSError as exc:
                out[i] = Outcome.retry(f"cannot write {target.name}: {exc.strerror}")
                _unlink_quietly(tmp)
                continue
            folders.setdefault(target.parent, []).append(i)
            targets[i] = target
        for folder, indexes in folders.items():
            try:
                _fsync_dir(folder)  # the renames themselves must survive a crash
            except OSError as exc:
                for i in indexes:
                    out[i] = Outcome.retry(f"cannot sync folder {folder.name}: {exc.strerror}")
                continue
            for i in indexes:
                out[i] = Outcome.delivered(response=str(targets[i]))
        # A failure seen late (fsync, rename) must still hold the patient's later items back.
        failed: set[str] = set()
        for i, item in enumerate(items):
            key = order_key(item)
            if key in failed:
                out[i] = None
            elif (outcome := out[i]) is None or outcome.kind != "delivered":
                failed.add(key)
        return out

    async def close(self) -> None:
        return None


def _open_temp(target: Path, delivery_id: int) -> tuple[int, str]:
    """The temp file of one delivery, named after its target and its id: a write cut short by
    a crash leaves it behind, and the delivery's retry truncates and renames that same file,
    so no stray temp file outlives the retry. Two deliveries of one message may share a
    target (two routes to one destination): the id keeps their temp files apart. Only the
    partition's owner writes a delivery, so two writers never share a name."""
    tmp = str(target.parent / f".{target.name}.{delivery_id}.tmp")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), tmp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_atomic(target: Path, data: bytes, delivery_id: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp(target, delivery_id)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)  # the rename itself must survive a crash
