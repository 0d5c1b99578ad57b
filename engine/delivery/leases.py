"""Partition ownership: leases in the store, with fencing tokens (issue #12).

Why leases in the store: the store is already the one thing every engine process shares and
trusts, and a conditional UPDATE on one row is an atomic compare-and-set on both PostgreSQL
and SQLite — no consensus of our own, no extra service. RabbitMQ's single-active-consumer
alone made one process active on every queue (failover, no capacity) and could not stop a
process that lost its broker connection from still recording outcomes.

Each process, every tick (a sixth of the lease):
- heartbeats its `engine_members` row; members whose heartbeat is older than the lease are
  dead and their row is removed;
- renews every lease it holds (`expires_at` = database time + lease);
- takes its share: with the live members sorted by id, the first P mod N take ⌈P/N⌉
  partitions, the others ⌊P/N⌋; a process under its share takes free or expired partitions
  with `UPDATE … SET owner = me, token = token + 1 WHERE partition = p AND (owner IS NULL OR
  expires_at < now)` (one winner per row; the token grows on every change of owner);
- gives back what exceeds its share — only after the pass in flight on that partition has
  recorded its outcome (`on_releasing`), then `owner = NULL` so the next process takes it on
  its next tick. A clean stop gives everything back at once the same way.

Fencing: a pass delivers under the token it read from `token()`; that answer is None as soon
as the lease may have expired by this process's own clock (last renewal started + lease, less
a margin), so a stalled process calls no destination after waking. The outcome recorder
checks, in the transaction that writes the outcomes, that the lease row still names this
process with that token (`check`: `SELECT … FOR SHARE` on PostgreSQL, so a takeover's UPDATE
waits for the outcome to commit, or the outcome sees the new token and is refused). On SQLite
the embedded engine is the only process, and SQLite has one writer at a time.

Time: expiry is compared with the database's clock (`now()` on PostgreSQL), so engine hosts'
clocks need not agree; the local validity uses the monotonic clock, started before the
renewal was sent, so it always ends before the row's expiry does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, update

from engine.store.database import Store
from engine.store.models import engine_members, partition_leases

log = logging.getLogger("parcours.leases")

# Of the lease, the part of its life a process does not use locally: covers the time between
# reading the monotonic clock and the database stamping `now()`, and clock-rate drift.
SAFETY = 0.15


class LeaseLost(Exception):
    """The process no longer holds the partition: its pass stops before the next delivery."""

    def __init__(self, partition: int, detail: str = "lease not held") -> None:
        super().__init__(f"partition {partition}: {detail}")
        self.partition = partition


class OutcomeFenced(LeaseLost):
    """The recorder refused an outcome: the lease row carries another owner or token."""

    def __init__(self, partition: int, delivery_ids: list[int]) -> None:
        super().__init__(partition, "outcome refused, the lease moved to another process")
        self.delivery_ids = delivery_ids


def default_member_id() -> str:
    """Unique per process start: a restarted process is a new member, never its own ghost."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def share(partitions: int, members: list[str], me: str) -> int:
    """⌈P/N⌉ for the first P mod N members in id order, ⌊P/N⌋ for the others."""
    if me not in members:
        return 0
    n = len(members)
    return partitions // n + (1 if members.index(me) < partitions % n else 0)


@dataclass
class _Held:
    token: int
    valid_until: float  # monotonic
    releasing: bool = False


@dataclass
class _TickResult:
    members: list[str]
    renewed: dict[int, int] = field(default_factory=dict)  # partition -> token
    acquired: dict[int, int] = field(default_factory=dict)


Hook = Callable[[int], Awaitable[None]]


async def _nothing(_p: int) -> None:
    return None


class PartitionLeases:
    def __init__(self, store: Store, partitions: int, *, member_id: str | None = None,
                 lease_seconds: float = 3.0, tick_seconds: float | None = None) -> None:
        self.store = store
        self.partitions = partitions
        self.member_id = member_id or default_member_id()
        self.lease_seconds = lease_seconds
        self.tick_seconds = tick_seconds or lease_seconds / 6
        self._held: dict[int, _Held] = {}
        self._giving_back: dict[int, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._rows_ready = False
        self.members: list[str] = []
        self.fenced_outcomes = 0  # outcome writes refused
        self.fenced_passes = 0  # passes stopped because the lease was not held any more
        self.takeovers = 0  # partitions acquired since start
        # Set by the engine: the bus consumer and the partition pass follow ownership.
        self.on_acquired: Hook = _nothing
        self.on_releasing: Hook = _nothing  # must return once no pass of p runs any more
        self.on_lost: Hook = _nothing

    # -- what the runner asks ---------------------------------------------------------------

    def token(self, partition: int) -> int | None:
        """The token to deliver under, or None when no destination may be called for this
        partition: not held, being given back, or renewal overdue (the row may have expired
        and another process may already own it)."""
        h = self._held.get(partition)
        if h is None or h.releasing or time.monotonic() >= h.valid_until:
            return None
        return h.token

    def owned(self) -> list[int]:
        """Partitions held now, including the ones being given back after their pass; not
        the ones whose renewal is overdue (a stalled process that woke up owns nothing it
        cannot prove)."""
        now = time.monotonic()
        return sorted(p for p, h in self._held.items() if now < h.valid_until)

    def check(self, conn: Any, partitions: set[int]) -> dict[int, int]:
        """In the outcome recorder's transaction: {partition: token} of the rows that still
        name this process. FOR SHARE (PostgreSQL) keeps them so until the commit: a process
        taking one over waits for these outcomes, then sweeps them as written."""
        q = (select(partition_leases.c.partition, partition_leases.c.token)
             .where(partition_leases.c.owner == self.member_id,
                    partition_leases.c.partition.in_(sorted(partitions)))
             .with_for_update(read=True))
        return {int(p): int(t) for p, t in conn.execute(q)}

    def stopped(self, exc: LeaseLost) -> None:
        """Count and log a pass stopped by fencing (message and delivery ids only)."""
        if isinstance(exc, OutcomeFenced):
            self.fenced_outcomes += len(exc.delivery_ids)
            log.warning("outcome refused: partition lease held by another process",
                        extra={"partition": exc.partition, "delivery_ids": exc.delivery_ids,
                               "member": self.member_id})
        else:
            self.fenced_passes += 1
            log.info("partition pass stopped: lease not held",
                     extra={"partition": exc.partition})

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """First tick now: an embedded engine owns every partition before it serves."""
        await self._tick()
        self._task = asyncio.create_task(self._run(), name="partition-leases")

    async def stop(self) -> None:
        """Clean stop: stop taking, let passes record, give every lease back at once and
        leave the members, so the other processes take over on their next tick."""
        if self._task is None:
            return  # never started (an engine that does not route)
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
        self._task = None
        for h in self._held.values():
            h.releasing = True
        held = sorted(self._held)
        results = await asyncio.gather(*(self.on_releasing(p) for p in held),
                                       return_exceptions=True)
        for p, res in zip(held, results, strict=True):
            if isinstance(res, BaseException):
                log.error("giving back a partition failed",
                          extra={"partition": p, "error": repr(res)})
        for t in list(self._giving_back.values()):
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        try:
            await asyncio.to_thread(self._leave)
        except Exception:
            log.exception("could not give the partition leases back (they will expire)")
        self._held.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Store unreachable: leases are not renewed, `token()` turns None once they
                # may have expired, and deliveries stop until the store answers again.
                log.exception("partition lease tick failed")

    async def _tick(self) -> None:
        started = time.monotonic()
        active = {p: h.token for p, h in self._held.items()}
        result = await asyncio.to_thread(self._db_tick, active)
        self.members = result.members
        valid_until = started + self.lease_seconds * (1 - SAFETY)
        for p in sorted(set(self._held) - set(result.renewed)):
            self._held.pop(p, None)
            log.warning("partition lease lost to another process", extra={"partition": p})
            await self.on_lost(p)
        for p in result.renewed:
            h = self._held.get(p)
            if h is not None:
                h.valid_until = valid_until
        for p, token in sorted(result.acquired.items()):
            self._held[p] = _Held(token, valid_until)
            self.takeovers += 1
            log.info("partition acquired", extra={"partition": p, "token": token})
            await self.on_acquired(p)
        quota = share(self.partitions, self.members, self.member_id)
        keep = sorted(p for p, h in self._held.items() if not h.releasing)
        for p in keep[quota:] if len(keep) > quota else []:
            self._held[p].releasing = True
            self._giving_back[p] = asyncio.create_task(self._give_back(p),
                                                       name=f"give-back-{p}")

    async def _give_back(self, p: int) -> None:
        try:
            await self.on_releasing(p)
            h = self._held.get(p)
            if h is not None:
                await asyncio.to_thread(self._release, p, h.token)
                self._held.pop(p, None)
                log.info("partition given back", extra={"partition": p})
        except Exception:
            log.exception("giving back a partition failed", extra={"partition": p})
        finally:
            self._giving_back.pop(p, None)

    # -- the store (worker threads) ---------------------------------------------------------

    def _now(self, conn: Any) -> datetime:
        if self.store.dialect == "postgresql":
            now = conn.execute(text("SELECT now()")).scalar_one()
            return now if now.tzinfo else now.replace(tzinfo=UTC)
        return datetime.now(UTC)

    def _ensure_rows(self, conn: Any) -> None:
        have = set(conn.execute(select(partition_leases.c.partition)).scalars())
        missing = [{"partition": p, "owner": None, "token": 0, "expires_at": None}
                   for p in range(self.partitions) if p not in have]
        if missing:
            conn.execute(_insert_ignore(self.store.dialect, partition_leases,
                                        ["partition"]), missing)

    def _db_tick(self, active: dict[int, int]) -> _TickResult:
        lease = timedelta(seconds=self.lease_seconds)
        lt = partition_leases.c
        with self.store.engine.begin() as conn:
            if not self._rows_ready:
                self._ensure_rows(conn)
            now = self._now(conn)
            conn.execute(_upsert_member(self.store.dialect),
                         {"id": self.member_id, "started_at": now, "heartbeat_at": now})
            conn.execute(delete(engine_members).where(engine_members.c.heartbeat_at < now - lease))
            members = sorted(conn.execute(select(engine_members.c.id)).scalars())
            # Renew what is still ours with the token we hold: an expired row nobody took
            # is still ours (no one else delivered meanwhile).
            renewed: dict[int, int] = {}
            if active:
                conn.execute(update(partition_leases)
                             .where(lt.owner == self.member_id,
                                    lt.partition.in_(sorted(active)))
                             .values(expires_at=now + lease))
                for p, token in conn.execute(
                        select(lt.partition, lt.token).where(
                            lt.owner == self.member_id, lt.partition.in_(sorted(active)))):
                    if active.get(int(p)) == int(token):
                        renewed[int(p)] = int(token)
        result = _TickResult(members, renewed)
        want = share(self.partitions, members, self.member_id) - len(active)
        if want <= 0:
            self._rows_ready = True
            return result
        with self.store.engine.connect() as conn:
            now = self._now(conn)
            free = list(conn.execute(
                select(lt.partition).where(
                    lt.partition < self.partitions,
                    or_(lt.owner.is_(None), lt.expires_at.is_(None), lt.expires_at < now))
                .order_by(lt.partition)).scalars())
        # One row per transaction: a process never waits for a row while holding another,
        # so two processes renewing and taking over cannot deadlock.
        for p in free[:want]:
            with self.store.engine.begin() as conn:
                now = self._now(conn)
                got = conn.execute(
                    update(partition_leases)
                    .where(lt.partition == p,
                           or_(lt.owner.is_(None), lt.expires_at.is_(None),
                               lt.expires_at < now))
                    .values(owner=self.member_id, token=lt.token + 1,
                            expires_at=now + lease)).rowcount
                if got == 1:
                    result.acquired[int(p)] = int(conn.execute(
                        select(lt.token).where(lt.partition == p)).scalar_one())
        self._rows_ready = True
        return result

    def _release(self, p: int, token: int) -> None:
        lt = partition_leases.c
        with self.store.engine.begin() as conn:
            conn.execute(update(partition_leases)
                         .where(lt.partition == p, lt.owner == self.member_id, lt.token == token)
                         .values(owner=None, expires_at=None))

    def _leave(self) -> None:
        lt = partition_leases.c
        with self.store.engine.begin() as conn:
            conn.execute(update(partition_leases).where(lt.owner == self.member_id)
                         .values(owner=None, expires_at=None))
            conn.execute(delete(engine_members).where(engine_members.c.id == self.member_id))

    # -- for operators and tests ------------------------------------------------------------

    def table(self) -> list[dict[str, Any]]:
        """The lease rows as the store has them (who owns what, under which token)."""
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(partition_leases).order_by(partition_leases.c.partition)).mappings()]

    def live_members(self) -> int:
        with self.store.engine.connect() as conn:
            now = self._now(conn)
            return int(conn.execute(select(func.count()).select_from(engine_members).where(
                and_(engine_members.c.heartbeat_at >= now -
                     timedelta(seconds=self.lease_seconds)))).scalar_one())


def _insert_ignore(dialect: str, table: Any, keys: list[str]) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=keys)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=keys)


def _upsert_member(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(engine_members)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(engine_members)
    return stmt.on_conflict_do_update(index_elements=["id"],
                                      set_={"heartbeat_at": stmt.excluded.heartbeat_at})
