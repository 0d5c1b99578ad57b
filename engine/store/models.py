"""The message store schema. Alembic migrations in engine/store/migrations build it; keep
them in step.

The store is the truth (design brief): raw bytes exactly as received, what intake read from
MSH, what was answered, and where each message stands. Queues only carry work.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for a message log.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class MessageStatus:
    """Where a message stands. Strings, so an operator reading the table understands them."""

    ACCEPTED = "accepted"  # stored and ACKed AA/CA; waiting for the router
    ERROR = "error"  # stored, answered AE/CE: failed validation of what the engine needs
    REJECTED = "rejected"  # stored, answered AR/CR: refused (charset, version, processing id…)
    DUPLICATE = "duplicate"  # an identical resend of an earlier message: original ACK again
    ROUTED = "routed"  # the router recorded its deliveries (outbox)
    UNROUTED = "unrouted"  # no route matched: kept, nothing to deliver
    DONE = "done"  # every delivery finished
    FAILED = "failed"  # at least one delivery dead-lettered


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    remote: Mapped[str | None] = mapped_column(String(128))
    sending_application: Mapped[str | None] = mapped_column(String(255))
    sending_facility: Mapped[str | None] = mapped_column(String(255))
    message_type: Mapped[str | None] = mapped_column(String(16))
    trigger_event: Mapped[str | None] = mapped_column(String(16))
    structure: Mapped[str | None] = mapped_column(String(16))
    control_id: Mapped[str | None] = mapped_column(String(199))
    version: Mapped[str | None] = mapped_column(String(32))
    processing_id: Mapped[str | None] = mapped_column(String(8))
    charset: Mapped[str | None] = mapped_column(String(32))
    patient_key: Mapped[str | None] = mapped_column(String(255))
    application_ack_type: Mapped[str | None] = mapped_column(String(2))
    size: Mapped[int] = mapped_column(Integer)
    truncated: Mapped[int] = mapped_column(Integer, default=0)  # 1 when only the head was kept
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    ack_code: Mapped[str | None] = mapped_column(String(2))
    ack: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Enhanced mode (MSH-16 AL/ER/SU): the application ACK built after routing, and whether it
    # went out on the sender's connection ("sent"), was not due ("not-required"), or could not
    # be sent because the connection was gone ("undeliverable").
    app_ack_code: Mapped[str | None] = mapped_column(String(2))
    app_ack: Mapped[bytes | None] = mapped_column(LargeBinary)
    app_ack_status: Mapped[str | None] = mapped_column(String(16))
    # sha1(channel, MSH-3, MSH-4, MSH-10) on the first arrival only; unique, so two engine
    # processes racing on the same resend cannot both accept it.
    dedup_key: Mapped[str | None] = mapped_column(String(40), unique=True)
    duplicate_of: Mapped[int | None] = mapped_column(BigId, ForeignKey("messages.id"))
    # sha256 of the content a resend must repeat (HL7: the message with MSH-7 blanked and
    # segment terminators normalised; CDA: the document's bytes): resend and reuse are told
    # apart without reading payloads back (engine/store/database.py content_digest).
    content_digest: Mapped[str | None] = mapped_column(String(64))
    # Set when this message reused the control id (MSH-10, or a CDA ClinicalDocument/id) of
    # an earlier message with different content: the id of the first message stored under
    # it. The operator's flag; the message itself is processed (or was refused, per the
    # channel's on_reused_control_id). No foreign key, so the column is a plain ADD COLUMN.
    reuse_of: Mapped[int | None] = mapped_column(BigId)
    file_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("inbound_files.id"))
    # Set by a retention pass that dropped the raw bytes and the delivery payloads (issue
    # #16, engine/store/prune.py); the metadata above stays searchable. Migration 0013_prune.
    pruned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # "history" for messages loaded by `parcours import --routes-as history`: only routes
    # with `history: true` take them (engine/intake/history_import.py). NULL for live arrivals.
    origin: Mapped[str | None] = mapped_column(String(16))
    # When `parcours import` loaded it; its `received_at` is then the message's original
    # time (MSH-7, else the file's mtime), so history is searched and retained by its own
    # dates. NULL for live arrivals. Migration 0014_prune.
    imported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # Migration 0013_prune also indexes the bare patient id (the part of patient_key after
    # "authority|"), an expression index the search's patient filter uses, and, on
    # PostgreSQL, (received_at, id).
    __table_args__ = (
        Index("ix_messages_status_id", "status", "id"),
        Index("ix_messages_channel_id", "channel", "id"),
        Index("ix_messages_type_id", "message_type", "trigger_event", "id"),
        Index("ix_messages_duplicate_of", "duplicate_of"),
        Index("ix_messages_received_at", "received_at"),
        Index("ix_messages_patient_key", "patient_key"),
        Index("ix_messages_control_id", "control_id"),
        Index("ix_messages_reuse_of", "reuse_of"),
    )


class InboundFile(Base):
    """A file taken from a folder channel: the record that makes pickup exactly-once."""

    __tablename__ = "inbound_files"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))  # archived | error
    reason: Mapped[str | None] = mapped_column(Text)
    message_count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (UniqueConstraint("channel", "name", "sha256", name="uq_inbound_file"),)


class DeliveryStatus:
    PENDING = "pending"  # recorded by the router, not tried yet
    RETRY = "retry"  # tried, failed, will be tried again at next_attempt_at
    DELIVERED = "delivered"
    DEAD = "dead"  # dead-letter: never delivered; an operator can retry it

    FINAL = ("delivered", "dead")


class Delivery(Base):
    """One message to one destination through one route: the outbox row.

    Written in the same transaction that marks the message routed, so the store alone knows
    every unfinished delivery; the bus only says "partition p has work".
    """

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(BigId, ForeignKey("messages.id"))
    route: Mapped[str] = mapped_column(String(100))
    destination: Mapped[str] = mapped_column(String(64))
    partition: Mapped[int] = mapped_column(Integer)
    # 0 for the first routing; an operator's replay routes again under generation + 1.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    patient_key: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    content_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    last_error: Mapped[str | None] = mapped_column(Text)
    response: Mapped[str | None] = mapped_column(Text)
    # The receiver's code for the last refusal (e.g. the DMP's XDSUnknownPatientId), apart
    # from the free text of last_error; cleared when delivered. Migration 0005_dmp_feed.
    error_code: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        UniqueConstraint("message_id", "route", "destination", "generation", name="uq_delivery"),
        Index("ix_deliveries_partition_status", "partition", "status", "message_id"),
        Index("ix_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_deliveries_dest_patient", "destination", "patient_key", "status"),
    )


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(BigId, ForeignKey("deliveries.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str] = mapped_column(String(16))  # delivered | retry | dead
    detail: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)


class MappingBacklog(Base):
    """A local lab code the normalisation could not map: what an operator works through."""

    __tablename__ = "mapping_backlog"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sender: Mapped[str] = mapped_column(String(255))
    performing_lab: Mapped[str] = mapped_column(String(255))
    code: Mapped[str] = mapped_column(String(255))
    coding_system: Mapped[str] = mapped_column(String(64))
    text: Mapped[str | None] = mapped_column(String(512))
    unit: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(64))
    example_value: Mapped[str | None] = mapped_column(String(255))
    count: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), index=True)  # open | mapped
    loinc: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        UniqueConstraint("sender", "performing_lab", "code", "coding_system",
                         name="uq_mapping_backlog"),
    )


class MappingBacklogMessage(Base):
    """Which messages carried a backlog code: reprocessed once the code is mapped."""

    __tablename__ = "mapping_backlog_messages"

    backlog_id: Mapped[int] = mapped_column(BigId, ForeignKey("mapping_backlog.id"),
                                            primary_key=True)
    message_id: Mapped[int] = mapped_column(BigId, ForeignKey("messages.id"), primary_key=True)


class DmpDocument(Base):
    """A document version the `dmp` destination numbered for a set (CDA setId), per destination.

    Why: a correction must replace the *latest* version the DMP holds (RPLC, CDA R2
    §4.2.3.1), and only the feed knows which one that is; the transformer that builds the
    document is pure and cannot. One row per delivery (idempotency key): a retry gets the same
    version, a replay or a new correction the next one. Migration 0005_dmp_feed.
    """

    __tablename__ = "dmp_documents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    destination: Mapped[str] = mapped_column(String(64))
    set_id: Mapped[str] = mapped_column(String(255))  # root^extension
    version: Mapped[int] = mapped_column(Integer)
    unique_id: Mapped[str] = mapped_column(String(255))  # root^extension once submitted
    idempotency_key: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # reserved | submitted
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("destination", "idempotency_key", name="uq_dmp_documents_key"),
        UniqueConstraint("destination", "set_id", "version", name="uq_dmp_documents_version"),
    )


class PartitionLease(Base):
    """Who may deliver a partition, until when, under which fencing token.

    Why a token and not only an owner: a process that stalled past its lease (GC pause, lost
    network, SIGSTOP) still believes it owns the partition when it wakes. The token grows on
    every change of owner, and the outcome recorder writes only while the row still carries
    the token the pass started with, so the stale owner's writes are refused
    (engine/delivery/leases.py).
    Migration 0010_leases.
    """

    __tablename__ = "partition_leases"

    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str | None] = mapped_column(String(128))
    token: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EngineMember(Base):
    """A live engine process: its heartbeat decides how many partitions each process takes."""

    __tablename__ = "engine_members"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


messages = Message.__table__
partition_leases = PartitionLease.__table__
engine_members = EngineMember.__table__
dmp_documents = DmpDocument.__table__
mapping_backlog = MappingBacklog.__table__
mapping_backlog_messages = MappingBacklogMessage.__table__
deliveries = Delivery.__table__
delivery_attempts = DeliveryAttempt.__table__
inbound_files = InboundFile.__table__
metadata = Base.metadata
