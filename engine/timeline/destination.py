"""The `timeline` destination: applies events envelopes to the timeline tables.

Outcomes: delivered when applied (or already applied by this or a newer generation —
idempotent); retry when the store fails or another process raced on the same rows (unique
constraint); dead when the payload is not an events envelope (a route without an event
transformer) — retrying cannot fix it.
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
        try:
            # The delivery's generation: a replay or an accepted mapping (generation + 1)
            # replaces what the first routing applied; the same delivery again does not.
            counts = await asyncio.to_thread(self.timeline.apply, envelope,
                                             int(item.headers.get("generation") or 0))
        except (IntegrityError, OperationalError) as exc:
            return Outcome.retry(f"store conflict or unavailable: {type(exc).__name__}")
        except SQLAlchemyError as exc:
            return Outcome.retry(f"store error: {type(exc).__name__}")
        except (KeyError, ValueError, TypeError) as exc:
            return Outcome.dead(f"events envelope rejected: {type(exc).__name__}: {exc}")
        log.info("timeline events applied", extra={"message_id": item.message_id,
                                                    "delivery_id": item.delivery_id, **counts})
        return Outcome.delivered(f"applied {counts['applied']}, skipped {counts['skipped']}")

    async def close(self) -> None:
        return None
