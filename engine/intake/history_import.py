"""Loading a site's history: folders of HL7 v2 files (single, several, FHS/BHS batches) and
CDA documents, through the same rules as a folder channel.

Each file goes in as a folder channel's file does (engine/intake/folders.py): its record in
`inbound_files` (channel, path, SHA-256) and all its messages in one transaction. That record
is the import's journal: a run stopped by Ctrl-C, a crash or a SIGKILL leaves every file
either wholly imported or not at all, and the next run of the same command skips the files
already recorded. Messages meet intake's rules: charsets (MSH-18 or the channel's), the
channel's `accept` policy, identical resends (duplicates) and reused control ids.

History is not live traffic: with `--routes-as history` (the default) the messages are marked
`origin = history` and only routes with `history: true` take them (engine/routing/router.py), so an
operator gives that flag to the timeline route and keeps DMP submission and MLLP forwarding
from receiving years of old messages. `--routes-as live` routes them like any arrival.

Times: an imported message is stored under its original time, so the search by date finds
history on its own dates and the retention clocks that start at arrival (unrouted, error,
duplicate, rejected; the dedup window) count from when it happened, not from the import.
`received_at` is MSH-7 (HL7 v2.5.1 §2.14.9.7, "date/time the sending system created the
message"; without an offset it is the sender's local time, §2.A.22, read as Europe/Paris),
else — no MSH-7, an unreadable one, a CDA document, a file refused whole — the file's mtime,
the closest thing to when the sender wrote it. `imported_at` keeps the import's own time.
Live arrivals keep the moment Parcours received them (`imported_at` NULL): MSH-7 is the
sender's clock, not ours, and is not used for them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from engine.config import Config
from engine.intake.folders import FileIntake
from engine.intake.handler import Intake, IntakePolicy
from engine.store.database import Arrival, Store
from transformers.events.common import hl7_time
from transformers.hl7.header import HeaderError, read_header

log = logging.getLogger("parcours.import")

HISTORY = "history"
PATTERNS = ("*.hl7", "*.HL7", "*.er7", "*.txt", "*.xml")
DEFAULT_CHANNEL = "import"


@dataclass
class ImportReport:
    files: int = 0  # imported in this run
    skipped: int = 0  # recorded by an earlier run: not read again
    messages: int = 0
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def files_under(paths: Iterable[Path], patterns: tuple[str, ...] = PATTERNS) -> list[Path]:
    """Files named on the command line as they are; folders searched recursively for the
    patterns. Sorted, so a resumed run meets the files in the same order."""
    found: set[Path] = set()
    for path in paths:
        if path.is_dir():
            for pattern in patterns:
                found.update(p for p in path.rglob(pattern)
                             if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            found.add(path)
        else:
            raise FileNotFoundError(str(path))
    return sorted(p.resolve() for p in found)


def policy_for_import(config: Config | None, channel: str) -> IntakePolicy:
    """A channel of routes.yaml lends its charset, accept and reuse settings; another name
    gets the defaults of a channel."""
    if config is not None and channel in config.channels:
        from engine.app import policy_for

        return policy_for(config.channels[channel])
    return IntakePolicy(channel=channel)


class HistoryImport:
    def __init__(self, store: Store, policy: IntakePolicy, *, history: bool = True) -> None:
        # Intake decides (no I/O); the file is committed by the store directly, not through
        # the group committer, which only the MLLP path needs.
        self.files = FileIntake(store, Intake(None))  # type: ignore[arg-type]
        self.store = store
        self.policy = policy
        self.origin = HISTORY if history else None

    def run(self, paths: list[Path], report: ImportReport | None = None,
            on_file: Callable[[Path, int, int], None] | None = None) -> ImportReport:
        """Import `paths` in order; `on_file(path, size, messages)` after each."""
        report = report or ImportReport()
        for path in paths:
            n = self.one(path, report)
            if on_file is not None:
                on_file(path, path.stat().st_size, n)
        return report

    def one(self, path: Path, report: ImportReport) -> int:
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        name = str(path)
        if self.store.find_file(self.policy.channel, name, sha) is not None:
            report.skipped += 1
            return 0
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        outcome = self.files._process(self.policy, name, data, sha, origin=self.origin,
                                      stamp=lambda arrivals: stamp_original_times(arrivals,
                                                                                  mtime))
        report.files += 1
        report.messages += outcome.message_count
        report.bytes += len(data)
        if outcome.status == "error" and outcome.reason:
            report.failed.append((name, outcome.reason.splitlines()[0]))
        log.info("file imported", extra={"channel": self.policy.channel,
                                         "messages": outcome.message_count,
                                         "status": outcome.status})
        return outcome.message_count


def original_time(raw: bytes) -> datetime | None:
    """MSH-7's first component (TS.1, the DTM; TS.2 is its precision in v2.5), in UTC."""
    try:
        header = read_header(raw)
    except HeaderError:
        return None
    dtm = header.timestamp.split(header.encoding.component, 1)[0]
    iso = hl7_time(dtm)
    return datetime.fromisoformat(iso) if iso else None


def stamp_original_times(arrivals: list[Arrival], mtime: datetime) -> None:
    """Each arrival's received_at becomes its original time; imported_at, the import's."""
    for a in arrivals:
        a.imported_at = a.received_at
        a.received_at = (original_time(a.raw) if a.charset != "xml" else None) or mtime
