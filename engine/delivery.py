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

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update

from channels.outbound.base import Destination, OutboundItem, Outcome

from .group_commit import Batcher
from .models import DeliveryStatus, MessageStatus, deliveries, delivery_attempts, messages
from .store import Store

log = logging.getLogger("parcours.delivery")



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
    def __init__(self, store: Store, *, batch: int = 200) -> None:
        self.store = store
        self.batch = batch
        self.destinations: dict[str, Destination] = {}
        self.policies: dict[str, RetryPolicy] = {}
        self.ordering: dict[str, str] = {}
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

    def stats_for(self, destination: str) -> DeliveryStats:
        return self.stats.setdefault(destination, DeliveryStats())

    # -- one partition --------------------------------------------------------------------

    async def run_partition(self, partition: int) -> None:
        """Deliver everything due in `partition`. Serialised per partition in this process;
        the bus's single-active-consumer serialises it across processes."""
        lock = self._locks.setdefault(partition, asyncio.Lock())
        async with lock:
            while True:
                progressed, next_due = await self._pass(partition)
                if not progressed:
                    break
            if next_due is not None:
                self._schedule(partition, next_due)

    def _schedule(self, partition: int, due: datetime) -> None:
        delay = max(0.0, (due - datetime.now(UTC)).total_seconds())
        old = self._timers.pop(partition, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[partition] = loop.call_later(delay + 0.01, self.notify, partition)

    async def _pass(self, partition: int) -> tuple[bool, datetime | None]:
        """One walk through the partition's waiting deliveries, page by page, so rows held
        behind a blocked (destination, patient) never hide the rows after them."""
        now = datetime.now(UTC)
        blocked: set[tuple[str, str]] = set()
        progressed = False
        next_due: datetime | None = None
        after = (0, 0)
        while True:
            rows = await asyncio.to_thread(self._pending, partition, after)
            for row in rows:
                dest_name = row["destination"]
                key = (dest_name, row["patient_key"] or f"message:{row['message_id']}")
                ordered = self.ordering.get(dest_name, "patient") == "patient"
                if ordered and key in blocked:
                    continue
                due = _aware(row["next_attempt_at"])
                if due > now:
                    next_due = _earliest(next_due, due)
                    if ordered:
                        blocked.add(key)
                    continue
                task = asyncio.ensure_future(self._deliver_one(row))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
                try:
                    outcome, new_due = await asyncio.shield(task)
                except asyncio.CancelledError:
                    # The pass is being taken away (bus connection lost, shutdown): finish
                    # the delivery in flight and record it before letting go, or the next
                    # owner of the partition would send it again.
                    await asyncio.wait([task])
                    raise
                progressed = True
                if outcome.kind != "delivered" and ordered:
                    blocked.add(key)
                next_due = _earliest(next_due, new_due)
            if len(rows) < self.batch:
                break
            after = (rows[-1]["message_id"], rows[-1]["id"])
        return progressed, next_due

    async def _deliver_one(self, row: dict[str, Any]) -> tuple[Outcome, datetime | None]:
        """Try one delivery and record its outcome before the next is tried: a killed process
        re-sends at most the delivery it was in the middle of."""
        destination = self.destinations.get(row["destination"])
        if destination is None:
            outcome = Outcome.retry(f"destination {row['destination']!r} is not configured "
                                    "(removed from routes.yaml?)")
        else:
            outcome = await self._attempt(destination, row)
        if not self._recorder_started:
            self._recorder_started = True
            self._recorder.start()
        due = await self._recorder.submit((row, outcome))
        return outcome, due

    async def _attempt(self, destination: Destination, row: dict[str, Any]) -> Outcome:
        item = OutboundItem(
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
        started = time.perf_counter()
        try:
            outcome = await destination.send(item)
        except Exception as exc:  # a destination bug must not stop the partition
            log.exception("destination raised", extra={"delivery_id": row["id"]})
            outcome = Outcome.retry(f"destination error: {type(exc).__name__}: {exc}")
        row["_duration_ms"] = (time.perf_counter() - started) * 1000
        if self.on_outcome:
            self.on_outcome(row["destination"], outcome.kind, time.perf_counter() - started)
        return outcome

    # -- store ----------------------------------------------------------------------------

    def _pending(self, partition: int, after: tuple[int, int] = (0, 0)) -> list[dict[str, Any]]:
        q = (
            select(deliveries, messages.c.channel, messages.c.message_type,
                   messages.c.trigger_event, messages.c.control_id, messages.c.received_at)
            .join(messages, messages.c.id == deliveries.c.message_id)
            .where(deliveries.c.partition == partition,
                   deliveries.c.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRY)),
                   or_(deliveries.c.message_id > after[0],
                       and_(deliveries.c.message_id == after[0], deliveries.c.id > after[1])))
            .order_by(deliveries.c.message_id, deliveries.c.id)
            .limit(self.batch)
        )
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def _record_each(self, done: list[tuple[dict[str, Any], Outcome]]
                     ) -> list[datetime | None | Exception]:
        """Record the outcomes the partitions handed in meanwhile, in one transaction (the
        recorder's thread). A partition never hands in its next outcome before this one is
        committed, so a SIGKILL still re-sends at most one delivery a partition — batching 32
        outcomes of one partition had raised that to 32 (tests/routing/test_rabbitmq.py counts
        them). If the batch fails, each outcome is recorded alone so one bad row fails alone."""
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
        """Statements per batch, not per outcome: SQLAlchemy Core costs ~0.2 ms a compiled
        statement here, and five per outcome made the recorder the busiest thread."""
        now = datetime.now(UTC)
        plans = [self._plan(row, outcome, now) for row, outcome in done]
        with self.store.engine.begin() as conn:
            by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for (row, _), plan in zip(done, plans, strict=True):
                values = plan[1]
                by_shape.setdefault(tuple(sorted(values)), []).append(
                    {"b_id": row["id"], **{f"b_{k}": v for k, v in values.items()}})
            for shape, params in by_shape.items():
                conn.execute(update(deliveries).where(deliveries.c.id == bindparam("b_id"))
                             .values({k: bindparam(f"b_{k}") for k in shape}), params)
            conn.execute(insert(delivery_attempts), [
                {"delivery_id": row["id"], "at": now, "outcome": kind, "detail": detail,
                 "duration_ms": int(row.get("_duration_ms", 0))}
                for (row, _), (kind, _v, detail, _d) in zip(done, plans, strict=True)])
            final = {row["message_id"] for (row, _), plan in zip(done, plans, strict=True)
                     if plan[0] in ("delivered", "dead")}
            if final:
                _settle_messages(conn, sorted(final))
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


def _settle_messages(conn: Any, message_ids: list[int]) -> None:
    """A message is done when all its deliveries are final; failed if any is dead."""
    is_open = case((deliveries.c.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRY)), 1),
                   else_=0)
    is_dead = case((deliveries.c.status == DeliveryStatus.DEAD, 1), else_=0)
    done: list[int] = []
    failed: list[int] = []
    for mid, open_left, dead in conn.execute(
            select(deliveries.c.message_id, func.sum(is_open), func.sum(is_dead))
            .where(deliveries.c.message_id.in_(message_ids))
            .group_by(deliveries.c.message_id)):
        if not open_left:
            (failed if dead else done).append(int(mid))
    for ids, status in ((done, MessageStatus.DONE), (failed, MessageStatus.FAILED)):
        if ids:
            conn.execute(update(messages).where(messages.c.id.in_(ids)).values(status=status))


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _date(ts: Any) -> str | None:
    return ts.strftime("%Y-%m-%d") if hasattr(ts, "strftime") else None
