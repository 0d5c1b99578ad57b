"""Reuses stored as 'duplicate' by versions before issue #15, turned into the new messages
they always were.

Those versions recognised a resend by (channel, MSH-3, MSH-4, MSH-10) alone: a message with
new content under a seen control id was stored as `duplicate` ("kept, not processed") and
answered with the first message's AA. An AA is a promise (design brief), so each such row
whose content differs from the message it points at becomes an accepted message, flagged
`reuse_of`, which the router then routes like any arrival. Identical resends stay what they
are. Running it again finds nothing left to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from engine.store.database import Store, content_digest, reuse_key
from engine.store.models import MessageStatus, messages

CHUNK = 500


@dataclass(frozen=True)
class Outcome:
    """What became of one 'duplicate' row whose content differs from its original."""

    message_id: int
    channel: str
    control_id: str | None
    first_id: int  # the first message stored under that control id
    action: str  # "reprocessed" | "resend" (of another reuse, reprocessed or new)
    resend_of: int | None = None


def _digest(row: Any) -> str:
    if row.content_digest:
        return str(row.content_digest)
    return content_digest(bytes(row.raw or b""), document=row.charset == "xml")


def reprocess_reuses(store: Store) -> list[Outcome]:
    """Turn the reuses stored as duplicates into accepted messages; return what was done.

    One transaction per chunk of rows, in id order, so a second reuse of the same content
    finds the first one already turned and becomes its resend. A key an engine process
    stored meanwhile (the same content arriving again now) makes that row its resend."""
    done: list[Outcome] = []
    after = 0
    cols = (messages.c.id, messages.c.channel, messages.c.control_id, messages.c.raw,
            messages.c.charset, messages.c.duplicate_of, messages.c.content_digest)
    while True:
        with store.engine.begin() as conn:
            rows = conn.execute(
                select(*cols).where(messages.c.status == MessageStatus.DUPLICATE,
                                    messages.c.duplicate_of.is_not(None),
                                    messages.c.id > after)
                .order_by(messages.c.id).limit(CHUNK)).all()
            if not rows:
                return done
            for row in rows:
                outcome = _one(conn, row)
                if outcome is not None:
                    done.append(outcome)
            after = rows[-1].id


def _one(conn: Connection, row: Any) -> Outcome | None:
    orig_cols = (messages.c.id, messages.c.dedup_key, messages.c.reuse_of, messages.c.raw,
                 messages.c.charset, messages.c.content_digest)
    orig = conn.execute(select(*orig_cols).where(messages.c.id == row.duplicate_of)).first()
    if orig is None:
        return None
    digest = _digest(row)
    if _digest(orig) == digest:
        return None  # an identical resend: stays a duplicate
    first = orig
    if orig.reuse_of is not None:
        first = conn.execute(select(*orig_cols).where(messages.c.id == orig.reuse_of)).first()
    if first is None or first.dedup_key is None:
        return None
    key = reuse_key(first.dedup_key, digest)
    for _attempt in range(2):
        holder = conn.execute(select(messages.c.id).where(messages.c.dedup_key == key)).first()
        if holder is not None:
            conn.execute(update(messages).where(messages.c.id == row.id).values(
                duplicate_of=holder.id, error=None, content_digest=digest))
            return Outcome(row.id, row.channel, row.control_id, first.id, "resend",
                           holder.id)
        sp = conn.begin_nested()
        try:
            conn.execute(update(messages).where(messages.c.id == row.id).values(
                status=MessageStatus.ACCEPTED, dedup_key=key, content_digest=digest,
                reuse_of=first.id, duplicate_of=None, error=None))
        except IntegrityError:  # an engine stored this content meanwhile: look again
            sp.rollback()
            continue
        sp.commit()
        return Outcome(row.id, row.channel, row.control_id, first.id, "reprocessed")
    return None
