"""Delivery: drain one partition's outbox rows in order, with retry, backoff and dead-letter.

Per-patient order: rows of a partition are taken in message-id order; when a delivery to a
destination fails for a patient (or waits for its next attempt), later deliveries of the
same patient to the same destination wait behind it ("ordering: patient", the default),
while other patients and other destinations go on. A dead-lettered delivery no longer holds
the line: the operator is told (dashboard, `parcours deliveries --status failed`) and decides.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from channels.outbound.base import (
    BatchDestination,
    Destination,
    OutboundItem,
    Outcome,
    order_key,
    send_in_order,
)
from engine.delivery.leases import LeaseLost, OutcomeFenced, PartitionLeases
from engine.intake.group_commit import Batcher
from engine.store.database import Store, _sqlite_value
from engine.store.models import (
    DeliveryStatus,
    MessageStatus,
    deliveries,
    messages,
)
from engine.store.write_gate import gate_of

log = logging.getLogger("parcours.delivery")

DEFAULT_BATCH_SIZE = 100  # deliveries handed to one destination at once (`batch_size`)

def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    initial_delay: float = 1.0
    max_delay: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.2

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> RetryPolicy:
        return cls(**(cfg or {}))

    def delay(self, attempt: int, rnd: random.Random | None = None) -> float:
        """Exponential backoff with ±jitter, after `attempt` failed tries (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(attempt - 1, 0))
        spread = base * self.jitter
        return max(0.0, base + (rnd or random).uniform(-spread, spread))


@dataclass
class DeliveryStats:
    delivered: int = 0
    retried: int = 0
    dead: int = 0


class DeliveryRunner:
    def __init__(self, store: Store, *, batch: int = 500) -> None:
        self.store = store
        self.batch = batch
        self.destinations: dict[str, Destination] = {}
        self.policies: dict[str, RetryPolicy] = {}
        self.ordering: dict[str, str] = {}
        self.batch_sizes: dict[str, int] = {}
        self.stats: dict[str, DeliveryStats] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self.notify: Callable[[int], None] = lambda p: None  # set by the engine (bus)
        self.on_outcome: Callable[[str, str, float], None] | None = None
        self.on_delivered: Callable[[str, float], None] | None = None  # end-to-end seconds
        # Outcomes of concurrent partitions share a transaction (one fsync); each partition
        # still waits for its own before its next delivery.
        self._recorder: Batcher[tuple[dict[str, Any], Outcome], datetime | None] = Batcher(
            self._record_each, name="parcours-outcomes")
        self._recorder_started = False
        self._in_flight: set[asyncio.Future[tuple[Outcome, datetime | None]]] = set()
        # Set by the engine: which partitions this process may deliver, and the fencing
        # check of the recorder's transaction (None: no check, e.g. a CLI retry).
        self.leases: PartitionLeases | None = None

    async def aclose(self, timeout: float = 30.0) -> None:
        """Let deliveries in flight record their outcome (a pass taken away finishes its
        delivery), then stop the outcome recorder. Called once the bus stopped."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)
        await asyncio.to_thread(self._recorder.close)

    def configure(self, destinations: dict[str, Destination], configs: dict[str, dict[str, Any]]
                  ) -> None:
        self.destinations = destinations
        self.policies = {n: RetryPolicy.from_config(c.get("retry")) for n, c in configs.items()}
        self.ordering = {n: c.get("ordering", "patient") for n, c in configs.items()}
        self.batch_sizes = {n: int(c.get("batch_size") or _default_batch_size(
            destinations.get(n))) for n, c in configs.items()}

    @property
    def recorder_cpu_seconds(self) -> float:
        return self._recorder.cpu_seconds

    def stats_for(self, destination: str) -> DeliveryStats:
        return self.stats.setdefault(destination, DeliveryStats())

    # -- one partition --------------------------------------------------------------------

    async def run_partition(self, partition: int) -> None:
        """Deliver everything due in `partition`. Serialised per partition in this process;
        the partition's lease (engine/delivery/leases.py) serialises it across processes."""
        if self.leases is not None and self.leases.token(partition) is None:
            return  # another process owns it (a notice that raced a hand-over)
        lock = self._locks.setdefault(partition, asyncio.Lock())
        async with lock:
            try:
                while True:
                    progressed, next_due = await self._pass(partition)
                    if not progressed:
                        break
            except LeaseLost as exc:
                if self.leases is not None:
                    self.leases.stopped(exc)
                return
            if next_due is not None:
                self._schedule(partition, next_due)

    async def wait_idle(self, partition: int) -> None:
        """Return once no pass of `partition` runs in this process (its delivery in flight
        recorded): what a process waits for before giving the partition's lease back."""
        async with self._locks.setdefault(partition, asyncio.Lock()):
            pass

    def _schedule(self, partition: int, due: datetime) -> None:
        delay = max(0.0, (due - datetime.now(UTC)).total_seconds())
        old = self._timers.pop(partition, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[partition] = loop.call_later(delay + 0.01, self.notify, partition)

    async def _pass(self, partition: int) -> tuple[bool, datetime | None]:
        """One walk through the partition's waiting deliveries, page by page, so rows held
        behind a blocked (destination, patient) never hide the rows after them. Each page's
        due rows go to their destinations as batches, the destinations side by side."""
        now = datetime.now(UTC)
        blocked: set[tuple[str, str]] = set()
        progressed = False
        next_due: datetime | None = None
        after = (0, 0)
        while True:
            rows = await asyncio.to_thread(self._pending, partition, after)
            groups: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
                dest_name = row["destination"]
                key = (dest_name, _order_key(row))
                ordered = self.ordering.get(dest_name, "patient") == "patient"
                if ordered and key in blocked:
                    continue
                due = _aware(row["next_attempt_at"])
                if due > now:
                    next_due = _earliest(next_due, due)
                    if ordered:
                        blocked.add(key)
                    continue
                groups.setdefault(dest_name, []).append(row)
            if groups:
                task = asyncio.ensure_future(self._deliver_groups(groups, blocked))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
                try:
                    results = await asyncio.shield(task)
                except asyncio.CancelledError:
                    # The pass is being taken away (bus connection lost, shutdown): finish
                    # the batches in flight and record them before letting go, or the next
                    # owner of the partition would send them again.
                    await asyncio.wait([task])
                    raise
                for _outcome, new_due in results:
                    progressed = True
                    next_due = _earliest(next_due, new_due)
            if len(rows) < self.batch:
                break
            after = (rows[-1]["message_id"], rows[-1]["id"])
        return progressed, next_due

    async def _deliver_groups(self, groups: dict[str, list[dict[str, Any]]],
                              blocked: set[tuple[str, str]]
                              ) -> list[tuple[Outcome, datetime | None]]:
        """Every destination's rows at once; within a destination, batches in order. The
        destinations that read what the timeline made of a message (`after_timeline`) go once
        the others are done."""
        waves: tuple[list[str], list[str]] = ([], [])
        for name in groups:
            waves[bool(getattr(self.destinations.get(name), "after_timeline", False))].append(
                name)
        out: list[tuple[Outcome, datetime | None]] = []
        for names in waves:
            done = await asyncio.gather(*(self._deliver_group(n, groups[n], blocked)
                                          for n in names))
            out += [r for results in done for r in results]
        return out

    async def _deliver_group(self, dest_name: str, rows: list[dict[str, Any]],
                             blocked: set[tuple[str, str]]
                             ) -> list[tuple[Outcome, datetime | None]]:
        """Hand the destination its due rows `batch_size` at a time and record each batch's
        outcomes before the next batch is sent: a killed process re-sends at most the batch
        it was in the middle of (per destination and partition)."""
        ordered = self.ordering.get(dest_name, "patient") == "patient"
        size = self.batch_sizes.get(dest_name, DEFAULT_BATCH_SIZE)
        results: list[tuple[Outcome, datetime | None]] = []
        for start in range(0, len(rows), size):
            chunk = [r for r in rows[start:start + size]
                     if not (ordered and (dest_name, _order_key(r)) in blocked)]
            if not chunk:
                continue
            for row in chunk:
                self._hold_lease(row)
            outcomes = await self._attempt_batch(dest_name, chunk)
            tried = [(row, o) for row, o in zip(chunk, outcomes, strict=True) if o is not None]
            if not tried:
                continue
            if not self._recorder_started:
                self._recorder_started = True
                self._recorder.start()
            dues = await asyncio.gather(*self._recorder.submit_many(tried))
            for (row, outcome), due in zip(tried, dues, strict=True):
                if outcome.kind != "delivered" and ordered:
                    blocked.add((dest_name, _order_key(row)))
                results.append((outcome, due))
            for row, o in zip(chunk, outcomes, strict=True):
                if o is None and ordered:  # not attempted: it waits behind its patient
                    blocked.add((dest_name, _order_key(row)))
        return results

    def _hold_lease(self, row: dict[str, Any]) -> None:
        """No destination is called for a partition this process may have lost; the token
        goes with the outcome to the recorder, which writes it only under that token."""
        if self.leases is None:
            return
        token = self.leases.token(row["partition"])
        if token is None:
            raise LeaseLost(row["partition"])
        row["_lease_token"] = token

    def _check_leases(self, conn: Any, done: list[tuple[dict[str, Any], Outcome]]) -> None:
        """Fencing, in the outcome transaction: refuse the whole batch if one outcome's
        partition moved to another process; `_record_each` then redoes it row by row, so
        only the stale owner's outcomes fail (OutcomeFenced stops their pass)."""
        if self.leases is None:
            return
        rows = [row for row, _ in done if "_lease_token" in row]
        if not rows:
            return
        held = self.leases.check(conn, {row["partition"] for row in rows})
        stale = [row for row in rows if held.get(row["partition"]) != row["_lease_token"]]
        if stale:
            raise OutcomeFenced(stale[0]["partition"], [row["id"] for row in stale])

    async def _attempt_batch(self, dest_name: str, rows: list[dict[str, Any]]
                             ) -> list[Outcome | None]:
        destination = self.destinations.get(dest_name)
        items = [_item(row) for row in rows]
        if destination is None:
            return _first_per_key(items, Outcome.retry(
                f"destination {dest_name!r} is not configured (removed from routes.yaml?)"))
        started = time.perf_counter()
        try:
            if isinstance(destination, BatchDestination):
                outcomes = await destination.send_batch(items)
            else:
                outcomes = await send_in_order(destination, items)
        except Exception as exc:  # a destination bug must not stop the partition
            log.exception("destination raised", extra={"delivery_id": rows[0]["id"]})
            outcome = Outcome.retry(f"destination error: {type(exc).__name__}: {exc}")
            outcomes = _first_per_key(items, outcome)
        seconds = time.perf_counter() - started
        tried = sum(1 for o in outcomes if o is not None) or 1
        for row, o in zip(rows, outcomes, strict=True):
            row["_duration_ms"] = seconds * 1000 / tried
            if o is not None and self.on_outcome:
                self.on_outcome(dest_name, o.kind, seconds / tried)
        return outcomes

    # -- store ----------------------------------------------------------------------------

    def _pending(self, partition: int, after: tuple[int, int] = (0, 0)) -> list[dict[str, Any]]:
        """One page of the partition's waiting deliveries, through the driver's cursor:
        SQLAlchemy's result processing of 500 rows a page (and of columns a pass never reads)
        was most of the delivery phase's own CPU."""
        sqlite = self.store.dialect == "sqlite"
        with self.store.engine.connect() as conn:
            cur = conn.connection.dbapi_connection.cursor()
            try:
                cur.execute(_PENDING_SQL if sqlite else _PENDING_SQL.replace("?", "%s"),
                            (partition, after[0], after[0], after[1], self.batch))
                rows = [dict(zip(_PENDING_COLUMNS, r, strict=True)) for r in cur.fetchall()]
            finally:
                cur.close()
        if sqlite:  # stored as SQLAlchemy's SQLite DateTime stores it: naive UTC text
            for row in rows:
                for k in ("next_attempt_at", "received_at"):
                    if isinstance(row[k], str):
                        row[k] = datetime.fromisoformat(row[k])
                row["payload"] = _bytes(row["payload"])
        else:
            for row in rows:
                row["payload"] = _bytes(row["payload"])
        return rows

    def _record_each(self, done: list[tuple[dict[str, Any], Outcome]]
                     ) -> list[datetime | None | Exception]:
        """Record the outcomes the partitions handed in meanwhile, in one transaction (the
        recorder's thread). A destination's next batch is not sent before the outcomes of its
        previous one are committed, so a SIGKILL re-sends at most the batch in flight per
        destination and partition (`batch_size`), each with its idempotency key
        (tests/routing/test_rabbitmq.py counts them). If the transaction fails, each outcome
        is recorded alone so one bad row fails alone."""
        try:
            return list(self._record_batch(done))
        except Exception:
            if len(done) == 1:
                raise
        out: list[datetime | None | Exception] = []
        for item in done:
            try:
                out.extend(self._record_batch([item]))
            except Exception as exc:
                out.append(exc)
        return out

    def _record_batch(self, done: list[tuple[dict[str, Any], Outcome]]
                      ) -> list[datetime | None]:
        """Statements per batch, not per outcome, through the driver's cursor: SQLAlchemy
        Core compiled and cached-key'd every statement of every batch, which made the
        recorder the busiest thread after the router (docs/benchmarks.md, issue #12)."""
        now = datetime.now(UTC)
        plans = [self._plan(row, outcome, now) for row, outcome in done]
        with self.store.engine.begin() as conn:
            self._check_leases(conn, done)
            raw = conn.connection.dbapi_connection
            gate = gate_of(self.store.engine)
            if gate is not None:  # the raw cursor bypasses the statement hook that takes it
                gate.hold(raw)
            _write_outcomes(raw.cursor(), self.store.dialect == "sqlite", done, plans, now)
        # Counted once committed (a batch redone row by row must not count twice).
        for (row, _), (kind, _v, _detail, _due) in zip(done, plans, strict=True):
            stats = self.stats_for(row["destination"])
            if kind == "delivered":
                stats.delivered += 1
                received = row.get("received_at")
                if self.on_delivered and received is not None:
                    self.on_delivered(row["destination"],
                                      (now - _aware(received)).total_seconds())
            elif kind == "retry":
                stats.retried += 1
            else:
                stats.dead += 1
                log.warning("delivery dead-lettered",
                            extra={"delivery_id": row["id"], "message_id": row["message_id"],
                                   "destination": row["destination"]})
        return [due for _k, _v, _d, due in plans]

    def _plan(self, row: dict[str, Any], outcome: Outcome, now: datetime
              ) -> tuple[str, dict[str, Any], str, datetime | None]:
        """(final kind, column values, attempt detail, next due) for one outcome."""
        attempts = row["attempts"] + 1
        policy = self.policies.get(row["destination"], RetryPolicy())
        kind = outcome.kind
        next_due: datetime | None = None
        if kind == "retry" and attempts >= policy.max_attempts:
            kind = "dead"
            detail = f"gave up after {attempts} attempts: {outcome.detail}"
        else:
            detail = outcome.detail
        # The receiver's code stays on the row until the delivery succeeds, so a dead or
        # waiting delivery says why in a form an operator can filter on.
        values: dict[str, Any] = {"attempts": attempts, "updated_at": now,
                                  "response": outcome.response,
                                  "error_code": None if kind == "delivered" else
                                  outcome.error_code}
        if kind == "delivered":
            values.update(status=DeliveryStatus.DELIVERED, delivered_at=now, last_error=None)
        elif kind == "retry":
            next_due = now + timedelta(seconds=policy.delay(attempts))
            values.update(status=DeliveryStatus.RETRY, next_attempt_at=next_due,
                          last_error=detail)
        else:
            values.update(status=DeliveryStatus.DEAD, last_error=detail)
        return kind, values, detail, next_due

    # -- operator actions -----------------------------------------------------------------

    def retry(self, delivery_ids: list[int], refused: dict[int, str] | None = None
              ) -> list[int]:
        """Put dead (or waiting) deliveries back in line now; returns partitions to notify.

        A delivery a retry cannot help is left as it is, with the reason in `refused`
        (delivery id → sentence): already delivered, still pending its first attempt, or
        dead-lettered by the router because its route's transformer failed — its payload is
        empty, so sending it again would only replace the transformer's error by the
        destination's complaint about an empty payload; `parcours replay` runs the
        transformers again.
        """
        now = datetime.now(UTC)
        parts: set[int] = set()
        refused = {} if refused is None else refused
        with self.store.engine.begin() as conn:
            rows = conn.execute(select(deliveries.c.id, deliveries.c.partition,
                                       deliveries.c.message_id, deliveries.c.status,
                                       deliveries.c.attempts, deliveries.c.last_error)
                                .where(deliveries.c.id.in_(delivery_ids))).all()
            for did, part, mid, status, attempts, last_error in rows:
                reason = _not_retryable(status, attempts, last_error, mid)
                if reason is not None:
                    refused[int(did)] = reason
                    continue
                conn.execute(update(deliveries).where(deliveries.c.id == did).values(
                    status=DeliveryStatus.RETRY, attempts=0, next_attempt_at=now,
                    updated_at=now))
                conn.execute(update(messages).where(messages.c.id == mid)
                             .values(status=MessageStatus.ROUTED))
                parts.add(int(part))
        return sorted(parts)


def _not_retryable(status: str, attempts: int, last_error: str | None, message_id: int
                   ) -> str | None:
    """Why a retry cannot help this delivery, or None when it can (dead or waiting)."""
    if status == DeliveryStatus.DELIVERED:
        return "already delivered: nothing to retry"
    if status == DeliveryStatus.PENDING:
        return "pending: it is already waiting for its first attempt"
    if status == DeliveryStatus.DEAD and not attempts:
        # Only the router dead-letters a delivery before any attempt: its transformer failed.
        return (f"never sent because its route failed: {last_error or 'transformer error'}; "
                f"fix the cause, then `parcours replay {message_id}` runs the route again")
    return None


_PENDING_COLUMNS = ("id", "message_id", "route", "destination", "partition", "generation",
                    "patient_key", "status", "attempts", "next_attempt_at", "content_type",
                    "payload", "channel", "message_type", "trigger_event", "control_id",
                    "received_at")
_PENDING_SQL = (
    'SELECT d.id, d.message_id, d.route, d.destination, d."partition", d.generation, '
    "d.patient_key, d.status, d.attempts, d.next_attempt_at, d.content_type, d.payload, "
    "m.channel, m.message_type, m.trigger_event, m.control_id, m.received_at "
    "FROM deliveries d JOIN messages m ON m.id = d.message_id "
    "WHERE d.\"partition\" = ? AND d.status IN ('pending', 'retry') "
    "AND (d.message_id > ? OR (d.message_id = ? AND d.id > ?)) "
    "ORDER BY d.message_id, d.id LIMIT ?")


def _bytes(value: Any) -> bytes:
    """bytes whatever the driver hands back for a blob (memoryview, bytearray)."""
    return value if isinstance(value, bytes) else bytes(value or b"")


_ATTEMPT_SQL = ("INSERT INTO delivery_attempts (delivery_id, at, outcome, detail, duration_ms) "
                "VALUES (?, ?, ?, ?, ?)")
# A message is done when none of its deliveries is open, failed when one of them is dead.
_SETTLE_SQL = ("SELECT message_id, SUM(CASE WHEN status IN ('pending', 'retry') THEN 1 ELSE 0 "
               "END), SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END) FROM deliveries "
               "WHERE message_id IN ({marks}) GROUP BY message_id")


def _write_outcomes(cur: Any, sqlite: bool,
                    done: list[tuple[dict[str, Any], Outcome]],
                    plans: list[tuple[str, dict[str, Any], str, datetime | None]],
                    now: datetime) -> None:
    """The recorder's statements on a DBAPI cursor (the caller's transaction): one
    executemany per shape of UPDATE, one for the attempts, then the messages whose
    deliveries became final are settled with one SELECT and one UPDATE per status."""
    def sql(text: str) -> str:
        return text if sqlite else text.replace("?", "%s")

    def value(v: Any) -> Any:
        return _sqlite_value(v) if sqlite else v

    try:
        by_shape: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for (row, _), (_kind, values, _detail, _due) in zip(done, plans, strict=True):
            shape = tuple(sorted(values))
            by_shape.setdefault(shape, []).append(
                (*(value(values[k]) for k in shape), row["id"]))
        for shape, params in by_shape.items():
            sets = ", ".join(f"{k} = ?" for k in shape)
            cur.executemany(sql(f"UPDATE deliveries SET {sets} WHERE id = ?"), params)
        cur.executemany(sql(_ATTEMPT_SQL), [
            (row["id"], value(now), kind, detail, int(row.get("_duration_ms", 0)))
            for (row, _), (kind, _v, detail, _d) in zip(done, plans, strict=True)])
        final = sorted({row["message_id"] for (row, _), plan in zip(done, plans, strict=True)
                        if plan[0] in ("delivered", "dead")})
        settled: dict[str, list[int]] = {MessageStatus.DONE: [], MessageStatus.FAILED: []}
        for chunk in _id_chunks(final):
            cur.execute(sql(_SETTLE_SQL.format(marks=", ".join("?" * len(chunk)))), chunk)
            for mid, open_left, dead in cur.fetchall():
                if not open_left:
                    settled[MessageStatus.FAILED if dead else MessageStatus.DONE].append(
                        int(mid))
        for status, ids in settled.items():
            for chunk in _id_chunks(ids):
                cur.execute(sql(f"UPDATE messages SET status = ? WHERE id IN "
                                f"({', '.join('?' * len(chunk))})"), [status, *chunk])
    finally:
        cur.close()


def _id_chunks(ids: list[int], size: int = 500) -> list[list[int]]:
    """Below SQLite's and psycopg's parameter limits."""
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def _order_key(row: dict[str, Any]) -> str:
    return row["patient_key"] or f"message:{row['message_id']}"


def _item(row: dict[str, Any]) -> OutboundItem:
    return OutboundItem(
        delivery_id=row["id"], message_id=row["message_id"], route=row["route"],
        destination=row["destination"], payload=row["payload"],
        content_type=row["content_type"], patient_key=row["patient_key"],
        attempt=row["attempts"] + 1,
        idempotency_key=f"{row['message_id']}:{row['route']}:{row['destination']}:"
                        f"{row['generation']}",
        headers={"channel": row.get("channel"), "message_type": row.get("message_type"),
                 "trigger_event": row.get("trigger_event"),
                 "control_id": row.get("control_id"), "generation": row["generation"],
                 "received_date": _date(row.get("received_at"))},
    )


def _default_batch_size(destination: Destination | None) -> int:
    """A transport destination (mllp, http, amqp) batches its in-flight window: outcomes are
    recorded once the window is answered, so a killed process re-sends at most that window.
    One that sends one item at a time gets one at a time; the others get DEFAULT_BATCH_SIZE."""
    window = getattr(destination, "default_batch_size", None)
    if window:
        return int(window)
    return DEFAULT_BATCH_SIZE if isinstance(destination, BatchDestination) else 1


def _first_per_key(items: list[OutboundItem], outcome: Outcome) -> list[Outcome | None]:
    """The same outcome for the first item of each patient; the later ones wait."""
    seen: set[str] = set()
    out: list[Outcome | None] = []
    for item in items:
        key = order_key(item)
        out.append(None if key in seen else outcome)
        seen.add(key)
    return out


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _date(ts: Any) -> str | None:
    return ts.strftime("%Y-%m-%d") if hasattr(ts, "strftime") else None
