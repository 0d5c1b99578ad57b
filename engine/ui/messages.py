"""Message search and the message page's data: the message, its ACKs, deliveries, attempts.

Search reads the columns intake already extracted from MSH and PID-3 (no raw bytes are read
for a list), newest first, paged by id so a page never shifts while messages keep arriving.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, String, literal_column, or_, select

from engine.store.database import Store
from engine.store.models import deliveries, delivery_attempts, messages

PAGE = 50
NARROW_RANGE = timedelta(days=31)


@dataclass
class Search:
    since: datetime | None = None
    until: datetime | None = None
    channel: str = ""
    type: str = ""  # "ORU" or "ORU^R01"
    status: str = ""
    control_id: str = ""
    patient: str = ""
    flag: str = ""  # "reused": new content under a control id the sender had used
    before_id: int | None = None

    @property
    def is_empty(self) -> bool:
        return not any((self.since, self.until, self.channel, self.type, self.status,
                        self.control_id, self.patient, self.flag))


def parse_when(value: str | None) -> datetime | None:
    """An <input type=datetime-local> value (browser local time is taken as UTC: the page
    says so) or an ISO timestamp; None when empty or unreadable."""
    if not value:
        return None
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def search(store: Store, s: Search, limit: int = PAGE) -> list[dict[str, Any]]:
    cols = [messages.c[n] for n in ("id", "channel", "received_at", "sending_application",
                                    "sending_facility", "message_type", "trigger_event",
                                    "control_id", "version", "patient_key", "status",
                                    "ack_code", "error", "size", "reuse_of",
                                    "duplicate_of")]
    # The page's ids first, then its rows: with only `id` to return, a filter on indexed
    # columns is answered from the index alone (a day of a busy store is tens of thousands of
    # entries, sorted for the newest 50 without reading a row); the rows are then read by id.
    newest = messages.c.id.desc()
    if s.since and s.until and s.until - s.since <= NARROW_RANGE:
        # A bounded range of a few weeks is read through the date index and its ids sorted;
        # ordering by the bare id lets the planner walk the primary key from the newest and
        # filter by date instead, which reads half the store for a range in the past
        # (docs/benchmarks.md). `id + 0` is the same order that no index offers.
        newest = (messages.c.id + 0).desc()
    q = select(messages.c.id).order_by(newest).limit(limit)
    if s.before_id:
        q = q.where(messages.c.id < s.before_id)
    if s.since:
        q = q.where(messages.c.received_at >= s.since)
    if s.until:
        q = q.where(messages.c.received_at <= s.until)
    if s.channel:
        q = q.where(messages.c.channel == s.channel)
    if s.status:
        q = q.where(messages.c.status == s.status)
    if s.control_id:
        q = q.where(messages.c.control_id == s.control_id.strip())
    if s.flag == "reused":
        q = q.where(messages.c.reuse_of.is_not(None))
    if s.type:
        mtype, _, trigger = s.type.strip().upper().partition("^")
        q = q.where(messages.c.message_type == mtype)
        if trigger:
            q = q.where(messages.c.trigger_event == trigger)
    if s.patient:
        p = s.patient.strip()
        # The key is "authority|id" ("INS|<NIR>" for the INS): the bare id matches too,
        # through the expression index of migration 0013_prune (a LIKE '%|id' read every row).
        q = q.where(or_(messages.c.patient_key == p, bare_patient_id(store.dialect) == p))
    page = (select(*cols).where(messages.c.id.in_(q.scalar_subquery()))
            .order_by(messages.c.id.desc()))
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(page).mappings()]


def bare_patient_id(dialect: str) -> ColumnElement[str]:
    """The id after "authority|" in patient_key, written exactly as the index
    ix_messages_patient_bare is (migration 0013_prune), so the planner uses it."""
    find = "instr" if dialect == "sqlite" else "strpos"
    # Literal SQL, not bound parameters: an expression index matches only the same text.
    return literal_column(f"substr(messages.patient_key, {find}(messages.patient_key, '|') + 1)",
                          String())


def channels_seen(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(c for c in conn.execute(select(messages.c.channel).distinct()).scalars())


def message_text(row: dict[str, Any], column: str = "raw") -> str:
    data = row.get(column)
    if data is None:
        return ""
    charset = row.get("charset") or "utf-8"
    if charset == "xml":
        charset = "utf-8"
    try:
        text = bytes(data).decode(charset, "replace")
    except LookupError:
        text = bytes(data).decode("utf-8", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def deliveries_of(store: Store, message_id: int) -> list[dict[str, Any]]:
    """Every delivery of a message (all generations) with its attempts, oldest first."""
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(
            select(deliveries).where(deliveries.c.message_id == message_id)
            .order_by(deliveries.c.generation, deliveries.c.id)).mappings()]
        ids = [r["id"] for r in rows]
        attempts: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        if ids:
            for a in conn.execute(select(delivery_attempts)
                                  .where(delivery_attempts.c.delivery_id.in_(ids))
                                  .order_by(delivery_attempts.c.id)).mappings():
                attempts[a["delivery_id"]].append(dict(a))
    for r in rows:
        r["attempt_rows"] = attempts.get(r["id"], [])
        r["payload_size"] = len(r.get("payload") or b"")
        r.pop("payload", None)
    return rows


def delivery(store: Store, delivery_id: int) -> dict[str, Any] | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(deliveries.c.id, deliveries.c.message_id,
                                  deliveries.c.status, deliveries.c.patient_key,
                                  deliveries.c.destination)
                           .where(deliveries.c.id == delivery_id)).mappings().first()
        return dict(row) if row else None


def failed_deliveries(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """Dead letters, newest first: the dashboard links each to its message page."""
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(deliveries.c.id, deliveries.c.message_id, deliveries.c.destination,
                   deliveries.c.route, deliveries.c.attempts, deliveries.c.updated_at,
                   deliveries.c.last_error)
            .where(deliveries.c.status == "dead")
            .order_by(deliveries.c.id.desc()).limit(limit)).mappings()]
