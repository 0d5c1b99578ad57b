"""The `timeline` destination: applies events envelopes to the timeline tables.

Outcomes:
- delivered when applied (or already applied by this or a newer generation — idempotent);
- retry when the store is unavailable, or when a unique constraint was broken by a genuine
  race (another process applied the same rows meanwhile): the envelope is applied once more
  at once, and a race is then over (the other transaction committed, the lookups find its
  rows);
- dead when retrying cannot help: the payload is not an events envelope, the envelope is
  refused, it names no patient, it carries no event at all (the message would otherwise be
  "done" having made nothing), or the same constraint breaks again on the immediate second
  try — a failure in the data, which waiting would only repeat while the patient's next
  messages wait behind it.

Many deliveries are applied at once (`send_batch`), in the partition's order, in transactions
of at most 20 ms of holding the write lock, results set-based a chunk at a time
(engine/timeline/batch.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from channels.outbound.base import OutboundItem, Outcome, order_key
from engine.timeline.service import Timeline

log = logging.getLogger("parcours.timeline")


class TimelineDestination:
    type = "timeline"

    def __init__(self, name: str, cfg: dict[str, Any], timeline: Timeline) -> None:
        self.name = name
        self.timeline = timeline
        window = (cfg.get("options") or {}).get("redundancy_window_days")
        if window is not None:
            from dataclasses import replace

            from engine.timeline.apply import Applier

            self.timeline = Timeline(timeline.db, replace(
                timeline.settings, redundancy_window_days=float(window)), timeline._catalogue)
            self.timeline.applier = Applier(self.timeline.settings)

    @property
    def cpu_seconds(self) -> float:
        return self.timeline.cpu_seconds

    async def send(self, item: OutboundItem) -> Outcome:
        outcome = (await self.send_batch([item]))[0]
        assert outcome is not None  # a batch of one is always attempted
        return outcome

    async def send_batch(self, items: Sequence[OutboundItem]) -> list[Outcome | None]:
        """Many messages in one transaction, in the partition's order (channels/outbound/base
        `BatchDestination`): a patient whose envelope fails has its later ones left for later."""
        out: list[Outcome | None] = [None] * len(items)
        todo: list[tuple[int, dict[str, Any]]] = []
        refused: set[str] = set()
        for i, item in enumerate(items):
            if order_key(item) in refused:
                continue
            envelope, refusal = _envelope(item)
            if refusal is not None:
                out[i] = refusal
                refused.add(order_key(item))
            else:
                todo.append((i, envelope))
        if todo:
            try:
                results = await asyncio.to_thread(
                    self.timeline.apply_many,
                    [(order_key(items[i]), env, int(items[i].headers.get("generation") or 0))
                     for i, env in todo])
            except SQLAlchemyError as exc:  # the batch's own commit failed: all retry
                results = [exc] * len(todo)
            for (i, env), result in zip(todo, results, strict=True):
                if isinstance(result, IntegrityError):
                    result = await self._once_more(items[i], env, result)
                out[i] = None if result is None else self._outcome(items[i], result)
        stopped: set[str] = set()
        for i, item in enumerate(items):
            key = order_key(item)
            if key in stopped:
                out[i] = None  # applied or not, it waits behind the patient's failure
            elif (outcome := out[i]) is not None and outcome.kind != "delivered":
                stopped.add(key)
        return out

    async def _once_more(self, item: OutboundItem, envelope: dict[str, Any],
                         first: IntegrityError) -> dict[str, int] | BaseException:
        """A broken constraint: a race with another process is over by now (its transaction
        committed, the lookups find its rows), so one immediate second try tells a race from
        a failure in the data."""
        log.info("timeline constraint conflict; applying once more", extra={
            "message_id": item.message_id, "delivery_id": item.delivery_id,
            "constraint": _constraint(first)})
        try:
            return await asyncio.to_thread(self.timeline.apply, envelope,
                                           int(item.headers.get("generation") or 0))
        except Exception as exc:  # classified by _outcome
            return exc

    @staticmethod
    def _outcome(item: OutboundItem, result: dict[str, int] | BaseException) -> Outcome:
        ids = {"message_id": item.message_id, "delivery_id": item.delivery_id}
        if isinstance(result, IntegrityError):
            constraint = _constraint(result)
            log.error("timeline delivery dead-lettered: the envelope breaks a store constraint "
                      "every time", extra={**ids, "constraint": constraint})
            return Outcome.dead(f"events envelope breaks store constraint {constraint} on "
                                "every try (not a race between processes): retrying cannot "
                                "fix it")
        if isinstance(result, OperationalError):
            log.warning("timeline store unavailable", extra=ids)
            return Outcome.retry(f"store unavailable: {type(result).__name__}")
        if isinstance(result, SQLAlchemyError):
            log.warning("timeline store error", extra={**ids, "error": type(result).__name__})
            return Outcome.retry(f"store error: {type(result).__name__}")
        if isinstance(result, KeyError | ValueError | TypeError):
            return Outcome.dead(f"events envelope rejected: {type(result).__name__}: {result}")
        if isinstance(result, BaseException):
            return Outcome.retry(f"timeline error: {type(result).__name__}")
        log.info("timeline events applied", extra={"message_id": item.message_id,
                                                    "delivery_id": item.delivery_id, **result})
        held = result.get("held")
        if held:  # identity vigilance: kept in a conflict for an operator (docs/timeline.md)
            return Outcome.delivered(f"held {held} for an identity conflict, "
                                     f"skipped {result['skipped']}")
        return Outcome.delivered(f"applied {result['applied']}, skipped {result['skipped']}")

    async def close(self) -> None:
        return None


def _envelope(item: OutboundItem) -> tuple[dict[str, Any], Outcome | None]:
    try:
        envelope = json.loads(item.payload)
    except ValueError:
        return {}, Outcome.dead("payload is not JSON: route it through an event transformer "
                                "(adt_events, oru_events, …)")
    if not isinstance(envelope, dict) or envelope.get("format") != "parcours.events":
        return {}, Outcome.dead("payload is not a parcours events envelope: route it through "
                                "an event transformer (adt_events, oru_events, …)")
    what = "^".join(x for x in (item.headers.get("message_type"),
                                 item.headers.get("trigger_event")) if x) or "message"
    if not envelope.get("events"):
        log.warning("no timeline event in message", extra={
            "message_id": item.message_id, "delivery_id": item.delivery_id})
        return {}, Outcome.dead(f"no timeline event: the event transformer found nothing it "
                                f"interprets in this {what}; nothing was applied")
    if envelope.get("patient") is None:
        return {}, Outcome.dead(f"no patient (PID) in this {what}: its events cannot be "
                                "placed on a timeline")
    return envelope, None


def _constraint(exc: IntegrityError) -> str:
    """The constraint's name (PostgreSQL) or the columns SQLite names — never the values,
    which may be patient data (PostgreSQL's DETAIL line carries the key's values)."""
    orig: Any = exc.orig
    name = getattr(getattr(orig, "diag", None), "constraint_name", None)
    if name:
        return str(name)
    text = str(orig).splitlines()[0] if str(orig) else ""
    if "constraint failed: " in text:  # SQLite: "UNIQUE constraint failed: table.column, …"
        return text
    return type(orig).__name__
