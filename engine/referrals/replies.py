"""Telling the requester: each status change a coordinator makes becomes an RRI^I12 to the
destinations that answer REF messages (the routes of routes.yaml whose transformers include
`referral_response`).

The RRI goes into the outbox as one more delivery of the REF that created the request, in
the transaction of the change itself, keyed by (message, route `referral-status#<history
id>`, destination): the store is the truth, the delivery runner sends it with its retries and
per-patient order, and a change is never announced twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from engine.referrals import workflow as wf
from engine.routing.router import partition_of
from engine.store.models import DeliveryStatus, deliveries, messages
from transformers.events.common import cx_list
from transformers.hl7.reader import Message
from transformers.hl7.referral import providers, referral_id
from transformers.hl7.rri import build_rri

RESPONSE_TRANSFORMER = "referral_response"


def reply_targets(config: Any) -> list[tuple[str, str]]:
    """(route, destination) pairs that answer a REF, enabled ones only."""
    if config is None:
        return []
    out = []
    for r in config.routes:
        if not r.enabled or RESPONSE_TRANSFORMER not in r.transform:
            continue
        for d in r.to:
            if (config.destinations.get(d) or {}).get("enabled", True) is not False:
                out.append((r.name, d))
    return out


class StatusReplies:
    def __init__(self, targets: Callable[[], list[tuple[str, str]]], partitions: int,
                 notify: Callable[[int], None] | None = None) -> None:
        self.targets = targets
        self.partitions = partitions
        self.notify = notify

    def queue(self, conn: Connection, referral: Any, history_id: int, status: str
              ) -> int | None:
        """Insert the RRI deliveries of one change; returns the partition to wake, if any."""
        targets = self.targets()
        if not targets or referral["message_id"] is None or referral["source"] != "hl7":
            return None
        ref = conn.execute(select(messages.c.id, messages.c.raw, messages.c.charset,
                                  messages.c.patient_key).where(
            messages.c.id == referral["message_id"])).mappings().first()
        if ref is None:
            return None
        msg = Message.parse(bytes(ref["raw"]).decode(ref["charset"] or "utf-8", "replace"))
        ident = referral_id(msg)
        if ident is None:
            return None
        body = build_rri(
            control_id=f"RRI{ref['id']}S{history_id}", in_reply_to="",
            status_code=wf.RF1_STATUS[status], referral_id=ident,
            patient_ids=cx_list(msg.segment("PID"), 3), providers=providers(msg),
            sending=(msg.get("MSH-5.1") or "PARCOURS", msg.get("MSH-6.1")),
            receiving=(msg.get("MSH-3.1"), msg.get("MSH-4.1")),
            version=msg.get("MSH-12.1") or "2.5", processing_id=msg.get("MSH-11.1") or "P",
        ).encode("utf-8")
        now = datetime.now(UTC)
        partition = partition_of(ref["patient_key"], ref["id"], self.partitions)
        conn.execute(insert(deliveries), [{
            "message_id": ref["id"], "route": f"referral-status#{history_id}",
            "destination": d, "partition": partition, "generation": 0,
            "patient_key": ref["patient_key"], "status": DeliveryStatus.PENDING,
            "attempts": 0, "next_attempt_at": now, "created_at": now, "updated_at": now,
            "content_type": "application/hl7-v2", "payload": body} for _, d in targets])
        return partition
