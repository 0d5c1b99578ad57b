"""The mapping backlog in the store: record unmapped codes, list them, accept a mapping.

Recorded by the router in the same transaction that routes the message, so a code seen in a
message is in the backlog exactly when the message is routed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from engine.store.database import Store
from engine.store.models import mapping_backlog, mapping_backlog_messages

OPEN, MAPPED = "open", "mapped"


def record(conn: Connection, message_id: int, entries: Iterable[dict[str, Any]]) -> int:
    """Upsert backlog entries seen in one message; returns how many new codes appeared."""
    now = datetime.now(UTC)
    new = 0
    seen: set[tuple[str, str, str, str]] = set()
    for e in entries:
        key = (e.get("sender") or "", e.get("performing_lab") or "", e.get("code") or "",
               e.get("coding_system") or "")
        if key in seen:
            continue
        seen.add(key)
        where = and_(mapping_backlog.c.sender == key[0],
                     mapping_backlog.c.performing_lab == key[1],
                     mapping_backlog.c.code == key[2], mapping_backlog.c.coding_system == key[3])
        row = conn.execute(select(mapping_backlog.c.id, mapping_backlog.c.status)
                           .where(where)).first()
        if row is None:
            backlog_id = _insert_entry(conn, key, e, now)
            new += 1
        else:
            backlog_id = row.id
            linked = conn.execute(select(func.count()).select_from(mapping_backlog_messages)
                                  .where(mapping_backlog_messages.c.backlog_id == backlog_id,
                                         mapping_backlog_messages.c.message_id == message_id)
                                  ).scalar_one()
            if linked:
                continue  # a replay of the same message: count it once
            conn.execute(update(mapping_backlog).where(mapping_backlog.c.id == backlog_id)
                         .values(count=mapping_backlog.c.count + 1, last_seen=now,
                                 status=OPEN if row.status == OPEN else row.status))
        conn.execute(insert(mapping_backlog_messages),
                     {"backlog_id": backlog_id, "message_id": message_id})
    return new


Key = tuple[str, str, str, str]  # sender, performing lab, code, coding system


def _key(e: dict[str, Any]) -> Key:
    return (e.get("sender") or "", e.get("performing_lab") or "", e.get("code") or "",
            e.get("coding_system") or "")


def record_many(conn: Connection, seen: list[tuple[int, list[dict[str, Any]]]]) -> int:
    """`record` for a router batch, set-based: one SELECT of the entries the batch names,
    one of their links to its messages, an INSERT per code never seen before, one
    executemany of the count updates and one of the new links, whatever the batch size —
    a lab that sends one unmappable code in every result cost four statements per message.

    The same rule as `record`: a message counts once per code (a replay adds nothing);
    returns how many new codes appeared."""
    now = datetime.now(UTC)
    first: dict[Key, dict[str, Any]] = {}
    pairs: list[tuple[Key, int]] = []  # (code, message) in the batch, each once
    once: set[tuple[Key, int]] = set()
    for message_id, entries in seen:
        for e in entries:
            key = _key(e)
            first.setdefault(key, e)
            if (key, message_id) not in once:
                once.add((key, message_id))
                pairs.append((key, message_id))
    if not pairs:
        return 0
    ids: dict[Key, int] = {}
    codes = sorted({k[2] for k in first})
    for row in conn.execute(select(mapping_backlog.c.id, mapping_backlog.c.sender,
                                   mapping_backlog.c.performing_lab, mapping_backlog.c.code,
                                   mapping_backlog.c.coding_system)
                            .where(mapping_backlog.c.code.in_(codes))):
        key = (row.sender, row.performing_lab, row.code, row.coding_system)
        if key in first:
            ids[key] = int(row.id)
    linked: set[tuple[int, int]] = set()
    if ids:
        linked = {(int(b), int(m)) for b, m in conn.execute(
            select(mapping_backlog_messages.c.backlog_id, mapping_backlog_messages.c.message_id)
            .where(mapping_backlog_messages.c.backlog_id.in_(sorted(set(ids.values()))),
                   mapping_backlog_messages.c.message_id.in_(sorted({m for _, m in pairs}))))}
    new = 0
    added: dict[Key, int] = {}
    links: list[dict[str, int]] = []
    for key, message_id in pairs:
        if key not in ids:
            e = first[key]
            ids[key] = _insert_entry(conn, key, e, now)
            new += 1
        elif (ids[key], message_id) in linked:
            continue  # a replay of the same message: counted once
        else:
            added[key] = added.get(key, 0) + 1
        linked.add((ids[key], message_id))
        links.append({"backlog_id": ids[key], "message_id": message_id})
    if added:
        conn.execute(update(mapping_backlog).where(mapping_backlog.c.id == bindparam("b_id"))
                     .values(count=mapping_backlog.c.count + bindparam("b_n"), last_seen=now),
                     [{"b_id": ids[k], "b_n": n} for k, n in added.items()])
    if links:
        conn.execute(insert(mapping_backlog_messages), links)
    return new


def open_entries(store: Store, sender: str | None = None) -> list[dict[str, Any]]:
    q = select(mapping_backlog).where(mapping_backlog.c.status == OPEN)
    if sender:
        q = q.where(mapping_backlog.c.sender == sender)
    q = q.order_by(mapping_backlog.c.count.desc(), mapping_backlog.c.id)
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def size(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(mapping_backlog)
                                .where(mapping_backlog.c.status == OPEN)).scalar_one())


def find(store: Store, sender: str, code: str, coding_system: str | None = None
         ) -> list[dict[str, Any]]:
    q = select(mapping_backlog).where(mapping_backlog.c.sender == sender,
                                      mapping_backlog.c.code == code)
    if coding_system is not None:
        q = q.where(mapping_backlog.c.coding_system == coding_system)
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def mark_mapped(store: Store, backlog_ids: list[int], loinc: str) -> list[int]:
    """Close entries; return the ids of the messages that carried them (to reprocess)."""
    with store.engine.begin() as conn:
        conn.execute(update(mapping_backlog).where(mapping_backlog.c.id.in_(backlog_ids))
                     .values(status=MAPPED, loinc=loinc))
        return sorted({int(m) for m in conn.execute(
            select(mapping_backlog_messages.c.message_id)
            .where(mapping_backlog_messages.c.backlog_id.in_(backlog_ids))).scalars()})


def accept(store: Store, mapping_dir: Path, sender: str, code: str, loinc: str, *,
           coding_system: str | None = None, unit: str | None = None) -> tuple[Path, list[int]]:
    """Write the mapping into the sender's file (validated), close the backlog entries, and
    return the messages to reprocess."""
    from loinc.catalogue import load_catalogue
    from mappings.loader import accept_mapping

    entries = find(store, sender, code, coding_system)
    system = coding_system if coding_system is not None else (
        entries[0]["coding_system"] if entries else "")
    text = entries[0]["text"] if entries else None
    lab = entries[0]["performing_lab"] if entries else None
    path = accept_mapping(mapping_dir, sender, code, system, loinc, unit,
                          performing_lab=lab if lab and lab != sender else None, text=text,
                          catalogue=load_catalogue())
    message_ids = mark_mapped(store, [e["id"] for e in entries], loinc) if entries else []
    return path, message_ids


def _insert_entry(conn: Any, key: tuple[str, str, str, str], e: dict[str, Any], now: Any) -> int:
    """A new open backlog row for (sender, performing lab, code, coding system); its id."""
    return int(conn.execute(insert(mapping_backlog).returning(mapping_backlog.c.id), {
        "sender": key[0], "performing_lab": key[1], "code": key[2],
        "coding_system": key[3], "text": (e.get("text") or "")[:512],
        "unit": (e.get("unit") or "")[:64], "reason": (e.get("reason") or "")[:64],
        "example_value": (e.get("example_value") or "")[:255], "count": 1,
        "first_seen": now, "last_seen": now, "status": OPEN, "loinc": None,
    }).scalar_one())
