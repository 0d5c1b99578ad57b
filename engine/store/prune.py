"""Applying the retention policy: small guarded transactions, then the space given back.

What is never removed, whatever the policy (the guards are in every write statement, not
only in the query that found the candidates, so a replay or a resend landing between the
two is seen):
- a delivery not yet delivered (pending, retry, dead: an operator may retry a dead letter),
  nor the raw bytes of its message; accepted, routed and failed messages are not candidates;
- the raw bytes of a message whose unmapped codes wait in the open mapping backlog (accepting
  the mapping reprocesses it);
- a whole row another row points at (a duplicate's original, a reused id's first message),
  a row the timeline applied (`applied_events`: the timeline's provenance) or one the mapping
  backlog names, and a row holding a dedup key while the dedup window lasts;
- timeline rows and the audit log: this module never writes to them.

Dropping payloads keeps the row and its metadata (ids, control id, type, patient, statuses,
ACK code, size) searchable; the content digest is computed first for rows stored before
digests existed, so a resend is still recognised.

Each write transaction is bounded by time (`BUDGET_S` of work, checked after every `CHUNK`
messages, as the timeline's 20 ms cap), by rows (`MAX_ROWS`) and, on SQLite, by another
writer waiting for the gate (`WriteGate.others_waiting`). On SQLite the writers
of an engine share the write gate (engine/store/write_gate.py), which serves them first come,
first served: a group commit queued behind the pruner goes as soon as that one transaction
commits, and the pruner then rests as long as it held the lock before asking again. The
WAL is checkpointed by the pruner between its transactions, outside the gate (PASSIVE: it
waits for no reader or writer): left to SQLite's auto-checkpoint, the commit that crosses
1,000 WAL pages copies them into the database and fsyncs it inside that COMMIT — with the
pruner writing most of the pages that was the pruner's own commit, holding the gate the
longest of all (docs/benchmarks.md). On PostgreSQL row locks on old rows never meet
intake's inserts; the same budget keeps each transaction's WAL and lock list small.
Space: SQLite databases created with auto_vacuum=INCREMENTAL give freed pages back to the
file system `VACUUM_PAGES` at a time (`incremental_vacuum`), each step one short hold of the
gate followed by a checkpoint and a rest; an older file needs one `parcours prune --vacuum`
(docs/operations.md). PostgreSQL gets a plain VACUUM of the pruned tables so the space is
reused by new rows at once (the file does not shrink).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar

from sqlalchemy import ColumnElement, delete, exists, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from engine.store.database import Store, content_digest
from engine.store.models import (
    DeliveryStatus,
    deliveries,
    delivery_attempts,
    mapping_backlog,
    mapping_backlog_messages,
    messages,
)
from engine.store.retention import SETTLED, Keep, Retention
from engine.store.write_gate import gate_of
from engine.timeline.models import applied_events

log = logging.getLogger("parcours.prune")

_R = TypeVar("_R")

BUDGET_S = 0.005  # work done in one prune transaction before it commits (then the commit)
MAX_ROWS = 50  # messages per prune transaction, whatever the clock says
CHUNK = 5  # messages per statement group: the budget is checked between groups
READ_AHEAD = 200  # candidates read (no write lock) per round of transactions
ATTEMPTS_PER_MESSAGE = 5  # attempt rows count as a fifth of a message in the limits above
VACUUM_PAGES = 64  # pages given back per incremental_vacuum step (one hold of the gate)
# The WAL file is truncated after a pass only up to this size: the ftruncate runs under the
# gate and costs in proportion to the file's size (measured in docs/benchmarks.md).
WAL_TRUNCATE_MAX = 16 << 20
HOLDS_KEPT = 100_000  # per-transaction timings a report keeps (a pass over 10M rows: 1M+)

_m = messages
_dup = messages.alias("dup")
_d = deliveries


@dataclass
class PruneReport:
    """What a pass removed (or, dry run, would remove)."""

    dry_run: bool = False
    payloads: int = 0  # messages whose raw bytes and delivered payloads were dropped
    payload_bytes: int = 0
    deliveries_emptied: int = 0
    attempts: int = 0
    messages: int = 0  # whole rows removed, with their deliveries and attempts
    message_bytes: int = 0
    batches: int = 0  # write transactions (each one hold of the write lock)
    longest_batch_ms: float = 0.0  # longest of them, COMMIT included
    most_rows_in_batch: int = 0  # messages (or attempts / ATTEMPTS_PER_MESSAGE) in the largest
    # Every hold (the newest HOLDS_KEPT), for bench/prune.py, and the COMMIT's part of each.
    batch_ms: deque[float] = field(default_factory=lambda: deque(maxlen=HOLDS_KEPT))
    commit_ms: deque[float] = field(default_factory=lambda: deque(maxlen=HOLDS_KEPT))
    vacuum_steps: int = 0
    longest_vacuum_step_ms: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # name -> perf_counter at its start
    file_bytes_before: int | None = None  # SQLite file (+ WAL); PostgreSQL relations
    file_bytes_after: int | None = None
    vacuum_note: str = ""
    by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_freed(self) -> int | None:
        if self.file_bytes_before is None or self.file_bytes_after is None:
            return None
        return self.file_bytes_before - self.file_bytes_after

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [
            f"payloads: {verb} raw bytes of {self.payloads} message(s) and "
            f"{self.deliveries_emptied} delivered payload(s): {_size(self.payload_bytes)}",
            f"attempts: {verb} {self.attempts} delivery attempt(s)",
            f"messages: {verb} {self.messages} whole message row(s): "
            f"{_size(self.message_bytes)}",
        ]
        if not self.dry_run and self.bytes_freed is not None:
            out.append(f"store: {_size(self.file_bytes_before or 0)} -> "
                       f"{_size(self.file_bytes_after or 0)} "
                       f"({_size(self.bytes_freed)} freed)")
        if self.vacuum_note:
            out.append(self.vacuum_note)
        return out


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _not_delivered(cutoff: datetime) -> ColumnElement[bool]:
    """A delivery of the message that is not delivered, or was delivered after `cutoff`."""
    return exists().where(_d.c.message_id == _m.c.id, or_(
        _d.c.status != DeliveryStatus.DELIVERED, _d.c.delivered_at.is_(None),
        _d.c.delivered_at >= cutoff))


def _in_open_backlog() -> ColumnElement[bool]:
    return exists().where(mapping_backlog_messages.c.message_id == _m.c.id,
                          mapping_backlog_messages.c.backlog_id == mapping_backlog.c.id,
                          mapping_backlog.c.status == "open")


def _referenced() -> ColumnElement[bool]:
    return or_(
        exists().where(_dup.c.duplicate_of == _m.c.id),
        exists().where(_dup.c.reuse_of == _m.c.id),
        exists().where(applied_events.c.message_id == _m.c.id),
        exists().where(mapping_backlog_messages.c.message_id == _m.c.id),
    )


@dataclass(frozen=True)
class _Group:
    """Messages of one status on one channel (or on every channel without a rule)."""

    status: str
    channel: str | None
    others: tuple[str, ...]  # with channel None: the channels that have rules of their own
    rule: Keep

    @property
    def label(self) -> str:
        return f"{self.channel or '*'}/{self.status}"

    def where(self) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = [_m.c.status == self.status]
        if self.channel is not None:
            conds.append(_m.c.channel == self.channel)
        elif self.others:
            conds.append(_m.c.channel.not_in(self.others))
        return conds


def _groups(policy: Retention) -> Iterator[_Group]:
    named = tuple(policy.channels)
    for status in SETTLED:
        for channel in named:
            yield _Group(status, channel, (), policy.rule(channel, status))
        yield _Group(status, None, named, policy.rule(None, status))


class Pruner:
    def __init__(self, store: Store, policy: Retention, *, budget_s: float = BUDGET_S,
                 max_rows: int = MAX_ROWS, clock: Callable[[], float] = time.perf_counter,
                 rest: bool = True) -> None:
        """`clock` decides when a transaction's budget is spent (a test passes one that it
        advances itself); `rest=False` skips the pause between transactions (tests)."""
        self.store = store
        self.policy = policy
        self.budget_s = budget_s
        self.max_rows = max_rows
        self.clock = clock
        self.rest = rest

    def run(self, *, dry_run: bool = False, now: datetime | None = None,
            vacuum: bool = True, on_batch: Callable[[PruneReport], None] | None = None
            ) -> PruneReport:
        """One pass: whole rows first (their payloads go with them), then payloads, then
        attempts; then the space. `now` is the clock the policy's days count back from
        (`--settled-before DATE` runs a zero-day policy with DATE as now)."""
        now = now or datetime.now(UTC)
        report = PruneReport(dry_run=dry_run)
        report.file_bytes_before = self.store_bytes()
        for group in _groups(self.policy):
            r = group.rule
            if r.message_days is not None:
                self._rows(group, now - timedelta(days=r.message_days), now, report,
                           dry_run, on_batch)
            if r.payload_days is not None:
                self._payloads(group, now - timedelta(days=r.payload_days), now, report,
                               dry_run, on_batch)
            if r.attempt_days is not None:
                self._attempts(group, now - timedelta(days=r.attempt_days), report,
                               dry_run, on_batch)
        if not dry_run and vacuum:
            report.phases["space"] = time.perf_counter()
            report.vacuum_note = self.give_back_space(report)
        report.file_bytes_after = self.store_bytes()
        return report

    # -- the write transactions -----------------------------------------------------------

    def _write(self, ids: list[int], step: Callable[[Connection, list[int]], _R],
               report: PruneReport, *, chunk: int = CHUNK, weight: int = 1) -> list[_R]:
        """Apply `step` to `ids`, `chunk` at a time, in as many transactions as the budget
        asks: a transaction takes chunks until it has worked `budget_s` (by `clock`), holds
        `max_rows` (ids / `weight`) or — SQLite — another writer waits for the gate
        (`WriteGate.others_waiting`: a thread of this process or a writer of the other), then
        commits, and the pruner rests before the next. SQLite: BEGIN IMMEDIATE takes the
        write lock (and the engine's write gate) before the guard is read again, so nothing
        commits between that read and the write."""
        out: list[_R] = []
        gate = gate_of(self.store.engine)
        i = 0
        while i < len(ids):
            started = time.perf_counter()
            rows = 0
            with self.store.engine.connect() as conn, _no_fsync(conn), conn.begin():
                if conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                    started = time.perf_counter()  # the hold starts once the gate is ours
                budget_from = self.clock()
                while i < len(ids) and rows < self.max_rows * weight and (
                        rows == 0 or (self.clock() - budget_from < self.budget_s
                                      and not (gate is not None and gate.others_waiting()))):
                    part = ids[i:i + chunk]
                    i += len(part)
                    rows += len(part)
                    out.append(step(conn, part))
                worked = time.perf_counter()
            ended = time.perf_counter()
            report.commit_ms.append((ended - worked) * 1000)
            self._after_transaction(report, ended - started, -(-rows // weight))
        return out

    def _after_transaction(self, report: PruneReport, held: float, rows: int) -> None:
        """Count the transaction, checkpoint the WAL outside the gate, then rest as long as
        the transaction held the write lock: the pruner takes at most half of the writers'
        time, and a writer queued on the gate meanwhile goes first (first come, first
        served)."""
        report.batches += 1
        report.batch_ms.append(held * 1000)
        report.longest_batch_ms = max(report.longest_batch_ms, held * 1000)
        report.most_rows_in_batch = max(report.most_rows_in_batch, rows)
        started = time.perf_counter()
        self.checkpoint()
        if self.rest:  # the checkpoint, outside the gate, was already part of the rest
            time.sleep(max(0.0, min(held, 1.0) - (time.perf_counter() - started)))

    def checkpoint(self) -> None:
        """SQLite: copy the WAL into the database now, in this thread, with no lock held.

        https://sqlite.org/c3ref/wal_checkpoint_v2.html: PASSIVE "checkpoint as many frames
        as possible without waiting for any database readers or writers to finish"; it
        never invokes the busy handler. Done after each prune transaction, the WAL never
        reaches the auto-checkpoint threshold (1,000 pages, https://sqlite.org/wal.html),
        so no COMMIT — intake's or the pruner's under the gate — pays for the copy and the
        database fsync."""
        if self.store.dialect != "sqlite":
            return
        with self.store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # -- payloads -------------------------------------------------------------------------

    def _payloads(self, group: _Group, cutoff: datetime, now: datetime, report: PruneReport,
                  dry_run: bool, on_batch: Callable[[PruneReport], None] | None) -> None:
        guard = [*group.where(), _m.c.pruned_at.is_(None), _m.c.received_at < cutoff,
                 ~_not_delivered(cutoff), ~_in_open_backlog()]
        after = 0
        while True:
            with self.store.engine.connect() as conn:
                rows = conn.execute(
                    select(_m.c.id, func.length(_m.c.raw), _m.c.content_digest)
                    .where(_m.c.id > after, *guard).order_by(_m.c.id).limit(READ_AHEAD)).all()
                if not rows:
                    return
                after = rows[-1][0]
                ids = [r[0] for r in rows]
                raw_bytes = {r[0]: int(r[1] or 0) for r in rows}
                payload_bytes, payload_counts = self._payload_bytes(conn, ids)
                digests = self._missing_digests(conn, [r[0] for r in rows if r[2] is None])
            if dry_run:
                pruned = ids
                report.deliveries_emptied += sum(payload_counts.values())
            else:
                sqlite = self.store.dialect == "sqlite"
                drop = _sqlite_drop_payloads if sqlite else _drop_payloads
                pruned = []
                step = partial(_drop_step, drop, guard, now, digests)
                for got, emptied in self._write(ids, step, report):
                    pruned.extend(got)
                    report.deliveries_emptied += emptied
            report.payloads += len(pruned)
            report.payload_bytes += sum(raw_bytes[i] + payload_bytes.get(i, 0) for i in pruned)
            report.by_rule[f"payloads {group.label}"] = (
                report.by_rule.get(f"payloads {group.label}", 0) + len(pruned))
            if on_batch:
                on_batch(report)

    @staticmethod
    def _payload_bytes(conn: Connection, ids: list[int]
                       ) -> tuple[dict[int, int], dict[int, int]]:
        """Bytes and number of the delivered payloads of each message."""
        rows = conn.execute(
            select(_d.c.message_id, func.sum(func.length(_d.c.payload)), func.count())
            .where(_d.c.message_id.in_(ids), _d.c.status == DeliveryStatus.DELIVERED)
            .group_by(_d.c.message_id)).all()
        return ({int(mid): int(n or 0) for mid, n, _c in rows},
                {int(mid): int(c) for mid, _n, c in rows})

    @staticmethod
    def _missing_digests(conn: Connection, ids: list[int]) -> dict[int, str]:
        if not ids:
            return {}
        rows = conn.execute(select(_m.c.id, _m.c.raw, _m.c.charset)
                            .where(_m.c.id.in_(ids))).all()
        return {int(mid): content_digest(bytes(raw or b""), document=charset == "xml")
                for mid, raw, charset in rows}

    # -- whole rows -----------------------------------------------------------------------

    def _rows(self, group: _Group, cutoff: datetime, now: datetime, report: PruneReport,
              dry_run: bool, on_batch: Callable[[PruneReport], None] | None) -> None:
        window = self.policy.dedup_cutoff(now)
        dedup_ok = (_m.c.dedup_key.is_(None) if window is None
                    else or_(_m.c.dedup_key.is_(None), _m.c.received_at < window))
        guard = [*group.where(), _m.c.received_at < cutoff, ~_not_delivered(cutoff),
                 ~_referenced(), dedup_ok]

        def remove(conn: Connection, part: list[int]) -> list[int]:
            # The guard is read again under the write lock (SQLite: BEGIN IMMEDIATE, as
            # engine/timeline/service.py; PostgreSQL: the rows locked), so a duplicate or a
            # replay committed since the first read keeps its row.
            keep_out = select(_m.c.id).where(_m.c.id.in_(part), *guard)
            if conn.dialect.name != "sqlite":
                keep_out = keep_out.with_for_update(of=_m)
            gone = list(conn.execute(keep_out).scalars())
            if gone:
                dels = select(_d.c.id).where(_d.c.message_id.in_(gone))
                conn.execute(delete(delivery_attempts)
                             .where(delivery_attempts.c.delivery_id.in_(dels)))
                conn.execute(delete(_d).where(_d.c.message_id.in_(gone)))
                conn.execute(delete(_m).where(_m.c.id.in_(gone)))
            return gone

        after = 0
        while True:
            with self.store.engine.connect() as conn:
                rows = conn.execute(
                    select(_m.c.id, func.length(_m.c.raw)).where(_m.c.id > after, *guard)
                    .order_by(_m.c.id).limit(READ_AHEAD)).all()
                if not rows:
                    return
                after = rows[-1][0]
                ids = [r[0] for r in rows]
                sizes = {r[0]: int(r[1] or 0) for r in rows}
                for mid, n in self._all_payload_bytes(conn, ids).items():
                    sizes[mid] += n
            if dry_run:
                gone = ids
            else:
                gone = [i for part in self._write(ids, remove, report) for i in part]
            report.messages += len(gone)
            report.message_bytes += sum(sizes[i] for i in gone)
            report.by_rule[f"messages {group.label}"] = (
                report.by_rule.get(f"messages {group.label}", 0) + len(gone))
            if on_batch:
                on_batch(report)

    @staticmethod
    def _all_payload_bytes(conn: Connection, ids: list[int]) -> dict[int, int]:
        rows = conn.execute(select(_d.c.message_id, func.sum(func.length(_d.c.payload)))
                            .where(_d.c.message_id.in_(ids)).group_by(_d.c.message_id)).all()
        return {int(mid): int(n or 0) for mid, n in rows}

    # -- attempts -------------------------------------------------------------------------

    def _attempts(self, group: _Group, cutoff: datetime, report: PruneReport, dry_run: bool,
                  on_batch: Callable[[PruneReport], None] | None) -> None:
        a = delivery_attempts
        guard = [*group.where(), a.c.at < cutoff, _d.c.status == DeliveryStatus.DELIVERED]
        joined = a.join(_d, a.c.delivery_id == _d.c.id).join(_m, _d.c.message_id == _m.c.id)

        def remove(conn: Connection, part: list[int]) -> int:
            # Delivered deliveries stay delivered: the guard needs no second look.
            conn.execute(delete(a).where(a.c.id.in_(part)))
            return len(part)

        after = 0
        while True:
            with self.store.engine.connect() as conn:
                ids = list(conn.execute(
                    select(a.c.id).select_from(joined).where(a.c.id > after, *guard)
                    .order_by(a.c.id).limit(READ_AHEAD * ATTEMPTS_PER_MESSAGE)).scalars())
            if not ids:
                return
            after = ids[-1]
            if not dry_run:
                self._write(ids, remove, report, chunk=CHUNK * ATTEMPTS_PER_MESSAGE,
                            weight=ATTEMPTS_PER_MESSAGE)
            report.attempts += len(ids)
            if on_batch:
                on_batch(report)

    # -- space ----------------------------------------------------------------------------

    def store_bytes(self) -> int | None:
        """SQLite: the database file and its WAL; PostgreSQL: the pruned tables with their
        indexes and TOAST."""
        if self.store.dialect == "sqlite":
            from pathlib import Path

            path = self.store.url.split("///", 1)[-1]
            if not path or path == ":memory:":
                return None
            return sum(p.stat().st_size for p in (Path(path), Path(path + "-wal"))
                       if p.exists())
        with self.store.engine.connect() as conn:
            return int(conn.exec_driver_sql(
                "SELECT pg_total_relation_size('messages') + pg_total_relation_size"
                "('deliveries') + pg_total_relation_size('delivery_attempts')").scalar_one())

    def give_back_space(self, report: PruneReport | None = None) -> str:
        if self.store.dialect == "sqlite":
            return sqlite_incremental_vacuum(self.store, report, self)
        # Plain VACUUM (not FULL): no lock that blocks intake's inserts; the freed space is
        # reused by new rows at once instead of waiting for autovacuum's next round.
        with self.store.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) messages, deliveries, delivery_attempts")
        return "store: VACUUM done; freed space is reused by new rows (the files keep their size)"


@contextmanager
def _no_fsync(conn: Connection) -> Iterator[None]:
    """SQLite: the pruner's COMMIT neither fsyncs the WAL nor checkpoints it
    (synchronous=NORMAL and wal_autocheckpoint=0 on its connection for the transaction, then
    the connection's own settings again).

    In WAL mode, NORMAL "ensures durability ... except a transaction committed might roll
    back following a power loss or system crash"; the database stays consistent
    (https://sqlite.org/pragma.html#pragma_synchronous). A prune transaction lost that way is
    redone by the next pass — nothing an ACK promised depends on it — and the next commit of
    a FULL writer (intake) fsyncs the WAL with the pruner's frames before its own. What it
    saves is the fsync inside the write lock: on a busy disk the pruner's COMMIT was most of
    its longest holds (docs/benchmarks.md)."""
    if conn.dialect.name != "sqlite":
        yield
        return
    dbapi = conn.connection.dbapi_connection
    mode = dbapi.execute("PRAGMA synchronous").fetchone()[0]  # DBAPI: no autobegin
    auto = dbapi.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    # Nor does it checkpoint: the pruner does that itself, outside the lock (`checkpoint`);
    # the other writers keep SQLite's auto-checkpoint as it was.
    dbapi.execute("PRAGMA synchronous=NORMAL")
    dbapi.execute("PRAGMA wal_autocheckpoint=0")
    try:
        yield
    finally:
        dbapi.execute(f"PRAGMA synchronous={int(mode)}")
        dbapi.execute(f"PRAGMA wal_autocheckpoint={int(auto)}")


def _drop_step(drop: Callable[..., tuple[list[int], int]], guard: list[ColumnElement[bool]],
               now: datetime, digests: dict[int, str], conn: Connection, part: list[int]
               ) -> tuple[list[int], int]:
    return drop(conn, part, guard, now, {i: d for i, d in digests.items() if i in part})


def _drop_payloads(conn: Connection, ids: list[int], guard: list[ColumnElement[bool]],
                   now: datetime, digests: dict[int, str]) -> tuple[list[int], int]:
    """PostgreSQL: UPDATE; the old tuple versions are VACUUM's (TOAST included)."""
    for mid, digest in digests.items():  # stored before migration 0006: resends still known
        conn.execute(update(_m).where(_m.c.id == mid, _m.c.content_digest.is_(None))
                     .values(content_digest=digest))
    pruned = list(conn.execute(update(_m).where(_m.c.id.in_(ids), *guard)
                               .values(raw=b"", pruned_at=now).returning(_m.c.id)).scalars())
    emptied = 0
    if pruned:
        emptied = int(conn.execute(
            update(_d).where(_d.c.message_id.in_(pruned),
                             _d.c.status == DeliveryStatus.DELIVERED)
            .values(payload=b"")).rowcount or 0)
    return pruned, emptied


def _sqlite_drop_payloads(conn: Connection, ids: list[int], guard: list[ColumnElement[bool]],
                          now: datetime, digests: dict[int, str]) -> tuple[list[int], int]:
    """SQLite: delete the rows and insert them again without their payloads.

    An UPDATE that shrinks a row kept inside its b-tree page (an HL7 message of a few KB is)
    leaves the page as full as it was in page count: nothing goes on the free list, and new
    rows, appended at the end of the rowid order, never reuse that space (measured: 20,000
    rows of 2 KB emptied by UPDATE, 0 pages freed; deleted and inserted again, 93 % of the
    pages freed). A DELETE rebalances under-full pages, merging them. Foreign keys that point
    at the rows (deliveries, attempts, duplicates) are checked at COMMIT
    (`defer_foreign_keys`), when the rows are back under the same ids. The caller's
    transaction began IMMEDIATE: the guard read and the rewrite are one snapshot."""
    conn.exec_driver_sql("PRAGMA defer_foreign_keys=ON")  # reset by SQLite at COMMIT
    cols = [c for c in _m.c if c.name != "raw"]
    rows = [dict(r) for r in conn.execute(select(*cols).where(_m.c.id.in_(ids), *guard))
            .mappings()]
    if not rows:
        return [], 0
    pruned = [int(r["id"]) for r in rows]
    for r in rows:
        r.update(raw=b"", pruned_at=now,
                 content_digest=r["content_digest"] or digests.get(int(r["id"])))
    dcols = [c for c in _d.c if c.name != "payload"]
    dels = [dict(r) for r in conn.execute(
        select(*dcols).where(_d.c.message_id.in_(pruned),
                             _d.c.status == DeliveryStatus.DELIVERED)).mappings()]
    if dels:
        conn.execute(delete(_d).where(_d.c.id.in_([d["id"] for d in dels])))
    conn.execute(delete(_m).where(_m.c.id.in_(pruned)))
    conn.execute(insert(_m), rows)
    if dels:
        conn.execute(insert(_d), [{**d, "payload": b""} for d in dels])
    return pruned, len(dels)


def sqlite_auto_vacuum(store: Store) -> int:
    """0 none, 1 full, 2 incremental (https://sqlite.org/pragma.html#pragma_auto_vacuum)."""
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA auto_vacuum").scalar_one())


def sqlite_incremental_vacuum(store: Store, report: PruneReport | None = None,
                              pruner: Pruner | None = None) -> str:
    """Give free pages back `VACUUM_PAGES` at a time, each step one hold of the write gate
    (a PRAGMA is not a statement the gate recognises, so it is taken here), then a PASSIVE
    checkpoint outside it and a rest as long as the step held it — as a prune transaction.
    Each step moves pages from the end of the file into free slots and writes them to the
    WAL; the file itself shrinks when the checkpoint copies the WAL back
    (https://sqlite.org/pragma.html#pragma_incremental_vacuum)."""
    if sqlite_auto_vacuum(store) != 2:
        return ("store: this SQLite file was created without auto_vacuum=INCREMENTAL; freed "
                "pages are reused but the file does not shrink. Stop the engine and run "
                "`parcours prune --vacuum` once (docs/operations.md).")
    gate = gate_of(store.engine)
    checkpoint = pruner.checkpoint if pruner else lambda: None
    rest = pruner.rest if pruner else False
    pages = 0
    with store.engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        mode = dbapi.execute("PRAGMA synchronous").fetchone()[0]
        auto = dbapi.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        while True:
            free = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar_one())
            if free == 0:
                break
            if gate is not None:
                gate.hold(dbapi)
            started = time.perf_counter()
            try:
                # executescript steps the PRAGMA to its end; execute() steps it once, which
                # frees one page (Python's sqlite3 module). No fsync of its COMMIT, as for a
                # prune transaction (`_no_fsync`): a step lost to a power cut is redone.
                dbapi.executescript("PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0; "
                                    f"PRAGMA incremental_vacuum({VACUUM_PAGES}); "
                                    f"PRAGMA synchronous={int(mode)}; "
                                    f"PRAGMA wal_autocheckpoint={int(auto)};")
            finally:
                if gate is not None:
                    gate.release(dbapi)
            held = time.perf_counter() - started
            pages += min(free, VACUUM_PAGES)
            if report is not None:
                report.vacuum_steps += 1
                report.longest_vacuum_step_ms = max(report.longest_vacuum_step_ms,
                                                    held * 1000)
            checkpoint()
            if rest:
                time.sleep(min(held, 1.0))
    if report is not None:
        report.phases["wal truncate"] = time.perf_counter()
    note = f"store: {pages} free page(s) given back to the file system"
    if not _truncate_wal(store):
        note += ("; the WAL file is larger than the pass may truncate under the write lock: "
                 "it is reused from its start and removed when the engine stops")
    return note


def _truncate_wal(store: Store) -> bool:
    """Empty the WAL file once the pass is over, if that costs no one a wait.

    A TRUNCATE checkpoint blocks new writers while it runs and waits (busy handler) for
    readers (https://sqlite.org/c3ref/wal_checkpoint_v2.html); with busy_timeout 10 s that
    was a stall of intake. Here the PASSIVE checkpoints have already copied nearly every
    frame; the TRUNCATE runs under the write gate (the engine's writers queue on it, not on
    SQLite's sleeping busy handler) with busy_timeout 0: a reader or another process's
    writer in the way makes it give up at once, and the WAL is then reused from its start
    by the next writer instead of shrinking now. A WAL file over `WAL_TRUNCATE_MAX` (left by
    one huge transaction: a bulk load, a migration) is not truncated here at all: the
    ftruncate alone would hold the gate in proportion to the file's size. SQLite removes the
    WAL when the last connection closes (https://sqlite.org/wal.html)."""
    from pathlib import Path

    path = store.url.split("///", 1)[-1]
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > WAL_TRUNCATE_MAX:
        return False
    gate = gate_of(store.engine)
    with store.engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        if gate is not None:
            gate.hold(dbapi)
        try:
            conn.exec_driver_sql("PRAGMA busy_timeout=0")
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.exec_driver_sql("PRAGMA busy_timeout=10000")
            if gate is not None:
                gate.release(dbapi)
    return True


def sqlite_full_vacuum(store: Store) -> None:
    """The one-time conversion of an older file to auto_vacuum=INCREMENTAL: VACUUM rewrites
    the whole database (it needs the engine stopped and free disk the size of the file)."""
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("PRAGMA auto_vacuum=INCREMENTAL")
        conn.exec_driver_sql("VACUUM")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def parse_date(value: str) -> datetime:
    """--settled-before: an ISO date or timestamp, UTC unless it says otherwise."""
    ts = datetime.fromisoformat(value.strip())
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)



async def prune_forever(store: Store, policy: Callable[[], Retention],
                        may_run: Callable[[], bool], stop: asyncio.Event) -> None:
    """The engine's scheduled pass, every `retention.every_minutes`. The policy is read again
    each time (a reload may change it); `may_run` keeps it to one process of a scaled
    deployment (the router)."""
    while not stop.is_set():
        minutes = policy().every_minutes
        try:
            await asyncio.wait_for(stop.wait(), minutes * 60 if minutes > 0 else 60)
            return
        except TimeoutError:
            pass
        current = policy()
        if current.every_minutes <= 0 or not current.enabled or not may_run():
            continue
        try:
            report = await asyncio.to_thread(Pruner(store, current).run)
        except Exception:
            log.exception("retention pass failed")
            continue
        log.info("retention pass", extra={
            "payloads": report.payloads, "attempts": report.attempts,
            "messages": report.messages, "bytes_freed": report.bytes_freed,
            "longest_batch_ms": round(report.longest_batch_ms, 1)})
