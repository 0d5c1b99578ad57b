"""Building message histories straight into the store: what years of traffic leave behind
(messages in every status, deliveries, attempts, duplicates, reuses, timeline and backlog
links), written with the store's own tables so the pruner meets real rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, update
from sqlalchemy.engine import Connection

from engine.store.database import content_digest
from engine.store.models import (
    deliveries,
    delivery_attempts,
    mapping_backlog,
    mapping_backlog_messages,
    messages,
)
from engine.timeline.models import applied_events


@dataclass
class DeliverySpec:
    status: str  # pending | retry | delivered | dead
    delivered_age: float = 0.0  # days before now, when delivered
    attempts: list[float] = field(default_factory=list)  # ages of the attempts, in days


@dataclass
class MessageSpec:
    status: str
    age: float  # days since received
    channel: str = "a"
    dedup: bool = False
    digest: bool = True  # False: stored before content digests existed
    deliveries: list[DeliverySpec] = field(default_factory=list)
    duplicate_of: int | None = None  # index of an earlier spec
    reuse_of: int | None = None
    applied: bool = False  # the timeline applied it
    backlog: str | None = None  # "open" | "mapped": its codes in the mapping backlog
    size: int = 120


def raw_of(i: int, size: int) -> bytes:
    head = (f"MSH|^~\\&|LAB|H{i % 3}|PARCOURS|X|20260101120000||ORU^R01|C{i}|P|2.5.1\r"
            f"PID|||{1000 + i}^^^H&1.2.3&ISO^PI\r").encode()
    return head + b"OBX|1|TX|||" + b"x" * max(0, size - len(head) - 12) + b"\r"


def clear(conn: Connection) -> None:
    for table in (delivery_attempts, deliveries, mapping_backlog_messages, mapping_backlog,
                  applied_events):
        conn.execute(delete(table))
    conn.execute(update(messages).values(duplicate_of=None))
    conn.execute(delete(messages))


def write(conn: Connection, specs: list[MessageSpec], now: datetime) -> list[int]:
    """Insert the history; return the message ids in spec order."""
    ids: list[int] = []
    backlog_ids: dict[str, int] = {}
    for i, s in enumerate(specs):
        raw = raw_of(i, s.size)
        received = now - timedelta(days=s.age)
        row: dict[str, Any] = {
            "channel": s.channel, "received_at": received, "message_type": "ORU",
            "trigger_event": "R01", "control_id": f"C{i}", "patient_key": f"H&1.2.3&ISO|{1000 + i}",
            "size": len(raw), "truncated": 0, "raw": raw, "status": s.status, "ack_code": "AA",
            "ack": b"MSH|ack", "sending_application": "LAB", "sending_facility": f"H{i % 3}",
            "dedup_key": f"{i:040x}"[-40:] if s.dedup else None,
            "content_digest": content_digest(raw) if s.digest else None,
            "duplicate_of": ids[s.duplicate_of] if s.duplicate_of is not None else None,
            "reuse_of": ids[s.reuse_of] if s.reuse_of is not None else None,
        }
        mid = int(conn.execute(insert(messages).returning(messages.c.id), row).scalar_one())
        ids.append(mid)
        for j, d in enumerate(s.deliveries):
            delivered = (now - timedelta(days=d.delivered_age)
                         if d.status == "delivered" else None)
            did = int(conn.execute(insert(deliveries).returning(deliveries.c.id), {
                "message_id": mid, "route": f"r{j}", "destination": f"d{j}", "partition": 0,
                "generation": 0, "patient_key": row["patient_key"], "status": d.status,
                "attempts": len(d.attempts), "next_attempt_at": received,
                "created_at": received, "updated_at": delivered or received,
                "delivered_at": delivered, "content_type": "application/hl7-v2",
                "payload": b"P" * 200 + raw,
            }).scalar_one())
            for age in d.attempts:
                conn.execute(insert(delivery_attempts), {
                    "delivery_id": did, "at": now - timedelta(days=age), "outcome": "retry",
                    "detail": None, "duration_ms": 3})
        if s.applied:
            conn.execute(insert(applied_events), {"message_id": mid, "event_type": "result",
                                                  "event_key": "k", "applied_at": received})
        if s.backlog:
            if s.backlog not in backlog_ids:
                backlog_ids[s.backlog] = int(conn.execute(
                    insert(mapping_backlog).returning(mapping_backlog.c.id), {
                        "sender": "LAB", "performing_lab": "L", "code": s.backlog,
                        "coding_system": "L", "count": 1, "first_seen": received,
                        "last_seen": received, "status": s.backlog}).scalar_one())
            conn.execute(insert(mapping_backlog_messages),
                         {"backlog_id": backlog_ids[s.backlog], "message_id": mid})
    return ids
