"""The message store: SQLite (WAL) embedded, PostgreSQL when scaled. One code path for both.

Writes on the intake path go through `save_arrivals`, called by the group committer with many
arrivals at once: one transaction, one fsync, for everything that came in meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import QueuePool

from .models import MessageStatus, inbound_files, messages

log = logging.getLogger("parcours.store")


def dedup_key(
    channel: str, sending_application: str, sending_facility: str, control_id: str
) -> str:
    """Identity of a message for duplicate detection (design brief: same sender + MSH-10)."""
    h = hashlib.sha1(usedforsecurity=False)
    for part in (channel, sending_application, sending_facility, control_id):
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\x1f")
    return h.hexdigest()


@dataclass
class Arrival:
    """One message as intake prepared it, waiting to be committed."""

    channel: str
    raw: bytes
    status: str
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    remote: str | None = None
    sending_application: str | None = None
    sending_facility: str | None = None
    message_type: str | None = None
    trigger_event: str | None = None
    structure: str | None = None
    control_id: str | None = None
    version: str | None = None
    processing_id: str | None = None
    charset: str | None = None
    patient_key: str | None = None
    application_ack_type: str | None = None
    error: str | None = None
    ack_code: str | None = None
    ack: bytes | None = None
    size: int | None = None
    truncated: bool = False
    file_id: int | None = None
    dedup: str | None = None  # dedup_key(...) when the message can be deduplicated

    def row(self) -> dict[str, Any]:
        row = self._row()
        for k, v in row.items():
            # PostgreSQL text refuses NUL; a \X00\ in PID-3 or a NUL in MSH-10 must not cost
            # the message (or its group-commit neighbours) its place in the store. The raw
            # bytes keep the NUL; only the indexed copies are altered.
            if isinstance(v, str) and "\x00" in v:
                row[k] = v.replace("\x00", "\ufffd")
        return row

    def _row(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "received_at": self.received_at,
            "remote": self.remote,
            "sending_application": self.sending_application,
            "sending_facility": self.sending_facility,
            "message_type": self.message_type,
            "trigger_event": self.trigger_event,
            "structure": self.structure,
            "control_id": self.control_id,
            "version": self.version,
            "processing_id": self.processing_id,
            "charset": self.charset,
            "patient_key": self.patient_key,
            "application_ack_type": self.application_ack_type,
            "size": self.size if self.size is not None else len(self.raw),
            "truncated": 1 if self.truncated else 0,
            "raw": self.raw,
            "status": self.status,
            "error": self.error,
            "ack_code": self.ack_code,
            "ack": self.ack,
            "dedup_key": self.dedup,
            "duplicate_of": None,
            "file_id": self.file_id,
        }


@dataclass(frozen=True)
class Saved:
    """What the store did with an arrival: its id, and for a resend the original's id and ACK."""

    id: int
    duplicate_of: int | None = None
    original_ack: bytes | None = None
    original_ack_code: str | None = None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL (default): a committed transaction survives power loss, which is what an ACK
    # promises. NORMAL (PARCOURS_SQLITE_SYNCHRONOUS=NORMAL) survives a crash of the engine
    # but may lose the last commits on power loss or an OS crash — about twice the commits/s.
    mode = os.environ.get("PARCOURS_SQLITE_SYNCHRONOUS", "FULL").upper()
    cur.execute(f"PRAGMA synchronous={'NORMAL' if mode == 'NORMAL' else 'FULL'}")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A pool, not one connection per transaction: closing the last connection to a WAL
        # database checkpoints and deletes the WAL, which multiplied the fsyncs per commit.
        eng = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 10},
            poolclass=QueuePool, pool_size=4, max_overflow=8,
        )
        event.listen(eng, "connect", _sqlite_pragmas)
        return eng
    return create_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        from .migrate import upgrade

        upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True

    # -- intake ---------------------------------------------------------------------------

    def save_arrivals(self, arrivals: list[Arrival]) -> list[Saved]:
        """Commit many arrivals in one transaction; resends become 'duplicate' rows.

        Runs in the group committer's thread. If another engine process inserted the same
        dedup key meanwhile (unique violation), falls back to one savepoint per arrival.
        """
        try:
            with self.engine.begin() as conn:
                return self._save(conn, arrivals, per_row=False)
        except IntegrityError:
            log.info("dedup race with another process; retrying batch row by row")
            with self.engine.begin() as conn:
                return self._save(conn, arrivals, per_row=True)
        except SQLAlchemyError:
            if len(arrivals) == 1:
                raise
            # One arrival the database refuses must not fail its neighbours: commit them one
            # by one; the refused one alone gets the error (and its sender an AR).
            log.warning("group commit failed; retrying arrivals one by one",
                        extra={"batch": len(arrivals)})
            out: list[Saved | Exception] = []
            for a in arrivals:
                try:
                    out.extend(self.save_arrivals([a]))
                except SQLAlchemyError as exc:
                    out.append(exc)
            return out  # type: ignore[return-value]

    def _sql(self, sql: str) -> str:
        """Queries are written with '?' (SQLite's style); psycopg wants '%s'."""
        return sql if self.dialect == "sqlite" else sql.replace("?", "%s")

    def _save(self, conn: Connection, arrivals: list[Arrival], per_row: bool) -> list[Saved]:
        """The intake hot path, written against the driver (`exec_driver_sql`): SQLAlchemy's
        compiled statements cost ~0.2 ms a row here, the driver a few tens of microseconds."""
        keys = sorted({a.dedup for a in arrivals if a.dedup})
        existing: dict[str, tuple[int, bytes | None, str | None]] = {}
        for chunk in _chunks(keys, 500):
            marks = ", ".join("?" for _ in chunk)
            for key, mid, ack, code in conn.exec_driver_sql(self._sql(
                    f"SELECT dedup_key, id, ack, ack_code FROM messages "
                    f"WHERE dedup_key IN ({marks})"), tuple(chunk)):
                existing[key] = (int(mid), ack, code)
        results: list[Saved] = []
        # Inserted in arrival order, so ids follow the order messages came in (the router
        # relies on it for per-patient order); a resend within the batch finds its original.
        for a in arrivals:
            row = a.row()
            original = existing.get(a.dedup) if a.dedup else None
            if original is None and a.dedup:
                new_id = self._insert(conn, row, per_row)
                if new_id >= 0:
                    existing[a.dedup] = (new_id, a.ack, a.ack_code)
                    results.append(Saved(new_id))
                    continue
                # Lost the race to another engine process: it is a resend after all.
                orig = conn.exec_driver_sql(self._sql(
                    "SELECT id, ack, ack_code FROM messages WHERE dedup_key = ?"),
                    (a.dedup,)).one()
                original = (int(orig[0]), orig[1], orig[2])
            if original is None:
                results.append(Saved(self._insert(conn, row, per_row)))
                continue
            orig_id, orig_ack, orig_code = original
            row.update(dedup_key=None, status=MessageStatus.DUPLICATE, duplicate_of=orig_id,
                       ack=orig_ack, ack_code=orig_code,
                       error=self._conflict(conn, orig_id, a.raw))
            results.append(Saved(self._insert(conn, row, False), orig_id, orig_ack, orig_code))
        return results

    def _conflict(self, conn: Connection, orig_id: int, raw: bytes) -> str | None:
        """A resend carries the same bytes (MSH-7 aside); different content under the same
        MSH-10 is a sender reusing control ids, which an operator must hear about."""
        original = conn.exec_driver_sql(self._sql("SELECT raw FROM messages WHERE id = ?"),
                                        (orig_id,)).scalar()
        if original is None:
            return None
        if _without_msh7(bytes(original)) == _without_msh7(raw):
            return None
        return "MSH-10 reused with different content: kept, not processed"

    def _insert(self, conn: Connection, row: dict[str, Any], per_row: bool) -> int:
        """Insert one message row; with per_row, inside a savepoint, -1 on a dedup clash."""
        if self.dialect == "sqlite":
            params = tuple(_sqlite_value(row.get(c)) for c in _MESSAGE_COLUMNS)
            sql = _SQLITE_INSERT
        else:
            params = tuple(row.get(c) for c in _MESSAGE_COLUMNS)
            sql = _PG_INSERT
        if not per_row:
            result = conn.exec_driver_sql(sql, params)
            return int(result.lastrowid if self.dialect == "sqlite" else result.scalar_one())
        sp = conn.begin_nested()
        try:
            result = conn.exec_driver_sql(sql, params)
            new_id = int(result.lastrowid if self.dialect == "sqlite" else result.scalar_one())
        except IntegrityError:
            sp.rollback()
            return -1
        sp.commit()
        return new_id

    # -- folder intake ----------------------------------------------------------------------

    def find_file(self, channel: str, name: str, sha256: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(inbound_files).where(
                    inbound_files.c.channel == channel,
                    inbound_files.c.name == name,
                    inbound_files.c.sha256 == sha256,
                )
            ).mappings().first()
            return dict(row) if row else None

    def save_file(
        self,
        *,
        channel: str,
        name: str,
        sha256: str,
        size: int,
        status: str,
        reason: str | None,
        arrivals: list[Arrival],
    ) -> tuple[int, list[Saved]]:
        """Record a file and all its messages in one transaction: all or nothing."""
        with self.engine.begin() as conn:
            file_id = int(
                conn.execute(
                    insert(inbound_files).returning(inbound_files.c.id),
                    {
                        "channel": channel,
                        "name": name,
                        "sha256": sha256,
                        "size": size,
                        "received_at": datetime.now(UTC),
                        "status": status,
                        "reason": reason,
                        "message_count": len(arrivals),
                    },
                ).scalar_one()
            )
            for a in arrivals:
                a.file_id = file_id
            saved = self._save(conn, arrivals, per_row=False) if arrivals else []
            return file_id, saved

    # -- reading --------------------------------------------------------------------------

    def get_message(self, message_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(messages).where(messages.c.id == message_id)).mappings()
            first = row.first()
            return dict(first) if first else None

    def list_messages(
        self,
        *,
        channel: str | None = None,
        status: str | None = None,
        control_id: str | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[dict[str, Any]]:
        cols = [c for c in messages.c if c.name not in ("raw", "ack")]
        q = select(*cols).where(messages.c.id > after_id).order_by(messages.c.id).limit(limit)
        if channel:
            q = q.where(messages.c.channel == channel)
        if status:
            q = q.where(messages.c.status == status)
        if control_id:
            q = q.where(messages.c.control_id == control_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def count_messages(self, **where: str) -> int:
        from sqlalchemy import func

        q = select(func.count()).select_from(messages)
        for k, v in where.items():
            q = q.where(messages.c[k] == v)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def set_status(self, message_id: int, status: str, error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(status=status, error=error)
            )


_MESSAGE_COLUMNS = [c.name for c in messages.c if c.name != "id"]
_SQLITE_INSERT = (f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in _MESSAGE_COLUMNS)})")
_PG_INSERT = (f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) "
              f"VALUES ({', '.join('%s' for _ in _MESSAGE_COLUMNS)}) RETURNING id")


def _sqlite_value(value: Any) -> Any:
    """The storage format SQLAlchemy's SQLite DateTime reads back (naive UTC text)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _without_msh7(raw: bytes) -> bytes:
    """The message minus MSH-7 (a resend may carry a new timestamp)."""
    end = raw.find(b"\r")
    end = len(raw) if end < 0 else end
    if len(raw) < 4:
        return raw
    fields = raw[:end].split(raw[3:4])
    if len(fields) > 6:
        fields[6] = b""
    return raw[3:4].join(fields) + raw[end:].replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def _chunks(items: list[str], n: int) -> list[list[str]]:
    return [items[i : i + n] for i in range(0, len(items), n)]
