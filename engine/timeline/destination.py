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
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from channels.outbound.base import OutboundItem, Outcome, order_key

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
            envelope, refusal = _envelope(item.payload)
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
            for (i, _env), result in zip(todo, results, strict=True):
                out[i] = None if result is None else self._outcome(items[i], result)
        stopped: set[str] = set()
        for i, item in enumerate(items):
            key = order_key(item)
            if key in stopped:
                out[i] = None  # applied or not, it waits behind the patient's failure
            elif (outcome := out[i]) is not None and outcome.kind != "delivered":
                stopped.add(key)
        return out

    @staticmethod
    def _outcome(item: OutboundItem, result: dict[str, int] | BaseException) -> Outcome:
        if isinstance(result, IntegrityError | OperationalError):
            return Outcome.retry(f"store conflict or unavailable: {type(result).__name__}")
        if isinstance(result, SQLAlchemyError):
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


def _envelope(payload: bytes) -> tuple[dict[str, Any], Outcome | None]:
    try:
        envelope = json.loads(payload)
    except ValueError:
        return {}, Outcome.dead("payload is not JSON: route it through an event transformer "
                                "(adt_events, oru_events, …)")
    if not isinstance(envelope, dict) or envelope.get("format") != "parcours.events":
        return {}, Outcome.dead("payload is not a parcours events envelope: route it through "
                                "an event transformer (adt_events, oru_events, …)")
    return envelope, None
