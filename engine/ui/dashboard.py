"""What the dashboard shows: per channel and destination state, and throughput per minute.

Counters since start come from the engine's own statistics (the ones /metrics exposes);
rates, dead letters and the throughput chart come from the store, because the store is the
truth: it is shared by every engine process of a scaled deployment and survives restarts, so
the chart does not drop to zero when a process is replaced and does not count only the share
of the traffic one process happened to take. Queries use the received_at / delivered_at
indexes and are cached briefly, so a wall of open dashboards costs one query per interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, cast, func, select

from engine.store.models import DeliveryStatus, MessageStatus, deliveries, messages

if TYPE_CHECKING:
    from engine.api.port import EngineView

RATE_WINDOW = 300  # seconds: "messages per minute" is averaged over the last five minutes
CHART_MINUTES = 60
CACHE_SECONDS = 2.0
ERROR_ACKS = ("AE", "AR", "CE", "CR")


class _Cache:
    """One value per key for a short time; the dashboard polls every few seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, Any]] = {}

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._values.get(key)
            if hit and now - hit[0] < self.ttl:
                return hit[1]
        value = build()
        with self._lock:
            self._values[key] = (time.monotonic(), value)
        return value


_cache = _Cache(CACHE_SECONDS)


def _minute(column: Any, dialect: str) -> Any:
    """A 'YYYY-MM-DD HH:MM' (UTC) bucket expression for a timestamp column, per dialect."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI")
    # SQLite keeps timestamps as ISO text in UTC ("2025-01-01 10:00:00.123456").
    return func.substr(cast(column, String), 1, 16)


def throughput(engine: EngineView, minutes: int = CHART_MINUTES) -> dict[str, Any]:
    """Per-minute counts over the last hour: received, delivered, failed (AE/AR or dead)."""

    def build() -> dict[str, Any]:
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        start = now - timedelta(minutes=minutes - 1)
        labels = [(start + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M")
                  for i in range(minutes)]
        dialect = engine.store.dialect
        rb = _minute(messages.c.received_at, dialect)
        db = _minute(deliveries.c.delivered_at, dialect)
        fb = _minute(deliveries.c.updated_at, dialect)
        with engine.store.engine.connect() as conn:
            received = dict(conn.execute(
                select(rb, func.count()).where(messages.c.received_at >= start)
                .group_by(rb)).all())
            rejected = dict(conn.execute(
                select(rb, func.count()).where(
                    messages.c.received_at >= start,
                    messages.c.status.in_((MessageStatus.ERROR, MessageStatus.REJECTED)))
                .group_by(rb)).all())
            delivered = dict(conn.execute(
                select(db, func.count()).where(deliveries.c.delivered_at >= start)
                .group_by(db)).all())
            dead = dict(conn.execute(
                select(fb, func.count()).where(deliveries.c.updated_at >= start,
                                               deliveries.c.status == DeliveryStatus.DEAD)
                .group_by(fb)).all())
        return {
            "labels": [lb[11:] for lb in labels],
            "received": [int(received.get(lb, 0)) for lb in labels],
            "delivered": [int(delivered.get(lb, 0)) for lb in labels],
            "failed": [int(rejected.get(lb, 0)) + int(dead.get(lb, 0)) for lb in labels],
        }

    return _cache.get(f"throughput:{id(engine)}:{minutes}", build)  # type: ignore[no-any-return]


def _recent(engine: EngineView) -> dict[str, Any]:
    """Per channel and destination: counts over the rate window, and dead letters now."""

    def build() -> dict[str, Any]:
        since = datetime.now(UTC) - timedelta(seconds=RATE_WINDOW)
        with engine.store.engine.connect() as conn:
            by_channel = dict(conn.execute(
                select(messages.c.channel, func.count()).where(messages.c.received_at >= since)
                .group_by(messages.c.channel)).all())
            by_dest = dict(conn.execute(
                select(deliveries.c.destination, func.count())
                .where(deliveries.c.delivered_at >= since)
                .group_by(deliveries.c.destination)).all())
            dead = dict(conn.execute(
                select(deliveries.c.destination, func.count())
                .where(deliveries.c.status == DeliveryStatus.DEAD)
                .group_by(deliveries.c.destination)).all())
        return {"channels": by_channel, "destinations": by_dest, "dead": dead}

    return _cache.get(f"recent:{id(engine)}", build)  # type: ignore[no-any-return]


def _conflicts_open(engine: EngineView) -> int:
    timeline = getattr(engine, "timeline", None)
    if timeline is None:
        return 0
    return _cache.get(f"conflicts:{id(engine)}", timeline.open_conflicts)  # type: ignore[no-any-return]


def _queues(engine: EngineView) -> dict[str, tuple[int, float]]:
    return _cache.get(f"queues:{id(engine)}", engine.queue_snapshot)  # type: ignore[no-any-return]


def conflicts(engine: EngineView, limit: int = 50) -> list[dict[str, Any]]:
    """Open identity and document conflicts with their evidence (issue #15): what an
    identity-vigilance operator must decide. Not cached: a resolution shows at once."""
    timeline = getattr(engine, "timeline", None)
    if timeline is None:
        return []
    return timeline.list_conflicts(None, None, "open", limit)  # type: ignore[no-any-return]


def snapshot(engine: EngineView) -> dict[str, Any]:
    """Everything the dashboard table shows, as JSON-ready data (polled by dashboard.js)."""
    recent = _recent(engine)
    channels = []
    for name, c in sorted(engine.channel_snapshot().items()):
        acks = c.get("acks", {})
        errors = int(c.get("parse_errors", 0)) + int(c.get("store_errors", 0)) + sum(
            int(acks.get(code, 0)) for code in ERROR_ACKS)
        channels.append({
            "name": name, "type": c["type"], "state": c["state"], "up": c["up"],
            "detail": c.get("detail") or "", "received": c["received"],
            "per_minute": round(int(recent["channels"].get(name, 0)) * 60 / RATE_WINDOW, 1),
            "errors": errors, "acks": acks, "duplicates": c.get("duplicates", 0),
            # New content under a seen control id, kept apart from resends (issue #15).
            "reuses": int(c.get("control_id_reuses", 0))
            + int(c.get("control_id_reuses_refused", 0)),
            "connections": c.get("connections_open", 0),
        })
    running = engine.running_channels()
    for name, cfg in sorted(engine.config.channels.items()):
        if name not in running:
            channels.append({"name": name, "type": cfg.type, "up": False,
                             "state": "disabled" if not cfg.enabled else "stopped",
                             "detail": "", "received": 0, "per_minute": 0.0, "errors": 0,
                             "acks": {}, "duplicates": 0, "reuses": 0,
                             "connections": 0})
    queues = _queues(engine)
    destinations = []
    stats = engine.destination_stats()
    for name in sorted(set(engine.config.destinations) | set(stats)):
        st = stats.get(name)
        depth, oldest = queues.get(name, (0, 0.0))
        dead_now = int(recent["dead"].get(name, 0))
        cfg = engine.config.destinations.get(name, {})
        state = "dead letters" if dead_now else ("backlog" if depth and oldest > 60 else "ok")
        if name not in engine.config.destinations:
            state = "removed"
        destinations.append({
            "name": name, "type": cfg.get("type", "?"), "state": state,
            "delivered": st.delivered if st else 0, "retried": st.retried if st else 0,
            "dead": st.dead if st else 0, "dead_now": dead_now,
            "per_minute": round(int(recent["destinations"].get(name, 0)) * 60 / RATE_WINDOW,
                                1),
            "queue": depth, "oldest_seconds": round(oldest, 1),
        })
    facts = engine.routing_facts()
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "channels": channels, "destinations": destinations,
        "backlog_codes": engine.backlog_size(),
        "conflicts_open": _conflicts_open(engine),
        "router": {"routed": facts["routed"], "is_router": facts["is_router"]},
        # This process's share of the partitions (engine/delivery/leases.py); the same number as
        # the gauge parcours_partitions_owned on /metrics.
        "partitions": {"owned": facts["partitions_owned"], "total": facts["partitions"],
                       "members": facts["members"], "fenced": facts["fenced"]},
    }
