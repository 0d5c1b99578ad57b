"""File destination: write atomically (temp + fsync + rename) under a filename pattern.

The same delivery always lands on the same name, so a retry after a crash overwrites the
same file with the same bytes: the effect happens once.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .base import OutboundItem, Outcome

DEFAULT_PATTERN = "{date}/{message_id}_{route}.{ext}"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EXT = {"application/json": "json", "application/hl7-v2": "hl7", "application/xml": "xml"}


class FileDestination:
    type = "file"

    def __init__(self, name: str, cfg: dict[str, Any]) -> None:
        self.name = name
        self.root = Path(cfg["path"])
        self.pattern = cfg.get("filename", DEFAULT_PATTERN)

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
            await asyncio.to_thread(_write_atomic, target, item.payload)
        except OSError as exc:
            return Outcome.retry(f"cannot write {target.name}: {exc.strerror}")
        return Outcome.delivered(response=str(target))

    async def close(self) -> None:
        return None


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
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
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a crash
    finally:
        os.close(dir_fd)
