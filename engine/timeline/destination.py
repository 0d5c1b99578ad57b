"""The `timeline` destination: applies events envelopes to the timeline tables.

Outcomes:
- delivered when applied (or already applied — idempotent);
- retry when the store is unavailable, or when a unique constraint was broken by a genuine
  race (another process applied the same rows meanwhile): the envelope is applied once more
  at once, and a race is then over (the other transaction committed, the lookups find its
  rows);
- dead when retrying cannot help: the payload is not an events envelope, the envelope is
  refused, it names no patient, it carries no event at all (the message would otherwise be
  "done" having made nothing), or the same constraint breaks again on the immediate second
  try — a failure in the data, which waiting would only repeat while the patient's next
  messages wait behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from channels.outbound.base import OutboundItem, Outcome

from .service import Timeline

log = logging.getLogger("parcours.timeline")


class TimelineDestination:
    type = "timeline"

    def __init__(self, name: str, cfg: dict[str, Any], timeline: Timeline) -> None:
        self.name = name
        self.timeline = timeline
        window = (cfg.get("options") or {}).get("redundancy_window_days")
        if window is not None:
            from dataclasses import replace

            from .apply import Applier

            self.timeline = Timeline(timeline.db, replace(
                timeline.settings, redundancy_window_days=float(window)), timeline._catalogue)
            self.timeline.applier = Applier(self.timeline.settings)

    async def send(self, item: OutboundItem) -> Outcome:
        try:
            envelope = json.loads(item.payload)
        except ValueError:
            return Outcome.dead("payload is not JSON: route it through an event transformer "
                                "(adt_events, oru_events, …)")
        if not isinstance(envelope, dict) or envelope.get("format") != "parcours.events":
            return Outcome.dead("payload is not a parcours events envelope: route it through "
                                "an event transformer (adt_events, oru_events, …)")
        what = "^".join(x for x in (item.headers.get("message_type"),
                                     item.headers.get("trigger_event")) if x) or "message"
        if not envelope.get("events"):
            log.warning("no timeline event in message", extra={
                "message_id": item.message_id, "delivery_id": item.delivery_id})
            return Outcome.dead(f"no timeline event: the event transformer found nothing it "
                                f"interprets in this {what}; nothing was applied")
        if envelope.get("patient") is None:
            return Outcome.dead(f"no patient (PID) in this {what}: its events cannot be "
                                "placed on a timeline")
        try:
            try:
                counts = await asyncio.to_thread(self.timeline.apply, envelope)
            except IntegrityError as first:
                log.info("timeline constraint conflict; applying once more", extra={
                    "message_id": item.message_id, "delivery_id": item.delivery_id,
                    "constraint": _constraint(first)})
                counts = await asyncio.to_thread(self.timeline.apply, envelope)
        except IntegrityError as exc:
            constraint = _constraint(exc)
            log.error("timeline delivery dead-lettered: the envelope breaks a store constraint "
                      "every time", extra={"message_id": item.message_id,
                                           "delivery_id": item.delivery_id,
                                           "constraint": constraint})
            return Outcome.dead(f"events envelope breaks store constraint {constraint} on "
                                "every try (not a race between processes): retrying cannot "
                                "fix it")
        except OperationalError as exc:
            log.warning("timeline store unavailable", extra={
                "message_id": item.message_id, "delivery_id": item.delivery_id})
            return Outcome.retry(f"store unavailable: {type(exc).__name__}")
        except SQLAlchemyError as exc:
            log.warning("timeline store error", extra={
                "message_id": item.message_id, "delivery_id": item.delivery_id,
                "error": type(exc).__name__})
            return Outcome.retry(f"store error: {type(exc).__name__}")
        except (KeyError, ValueError, TypeError) as exc:
            return Outcome.dead(f"events envelope rejected: {type(exc).__name__}: {exc}")
        log.info("timeline events applied", extra={"message_id": item.message_id,
                                                    "delivery_id": item.delivery_id, **counts})
        return Outcome.delivered(f"applied {counts['applied']}, skipped {counts['skipped']}")

    async def close(self) -> None:
        return None


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
