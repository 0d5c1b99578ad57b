"""The coordination timeline's tables (issue #5). Migration 0004_timeline builds them.

SQLAlchemy Core tables on their own MetaData: the timeline shares the store's database but
none of the intake tables. Rows are never deleted: a cancelled movement, a deleted result or
a replaced document keeps its row with a status, so a late message can still find what it
cancels and an audit can tell what a reader saw. The audit log is append-only (triggers in
the migration refuse UPDATE and DELETE on both databases).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

BigId = BigInteger().with_variant(Integer(), "sqlite")
TS = DateTime(timezone=True)

metadata = MetaData()


def _id() -> Column:  # type: ignore[type-arg]
    return Column("id", BigId, primary_key=True, autoincrement=True)


def _patient() -> Column:  # type: ignore[type-arg]
    return Column("patient_id", BigId, ForeignKey("patients.id"), nullable=False, index=True)


patients = Table(
    "patients", metadata, _id(),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    # A40/A47: the absorbed patient points at its survivor; reads follow the chain.
    Column("merged_into", BigId, ForeignKey("patients.id")),
    Column("family", String(255)),
    Column("given", String(255)),
    Column("birth_date", String(8)),
    Column("sex", String(8)),
    Column("identity_status", String(16)),  # PID-32: PROV, VALI, RECUP, QUAL, DOUTE, FICTI
    Column("ins", String(64)),
    Column("ins_authority", String(64)),
    Column("demographics_message_id", BigInteger),  # newest message that set the names
    Column("dmp_status", String(32)),
    Column("dmp_feeding_opposition", Boolean),
    Column("dmp_consultation_consent", Boolean),
    Column("consent_at", TS),
)

patient_identifiers = Table(
    "patient_identifiers", metadata, _id(), _patient(),
    Column("authority", String(255), nullable=False),  # CX-4.2 (OID) or CX-4.1
    Column("namespace", String(255)),
    Column("value", String(255), nullable=False),
    Column("type", String(16), nullable=False),  # INS, PI, MR, AN…
    Column("created_at", TS, nullable=False),
    Column("message_id", BigInteger),
    UniqueConstraint("authority", "value", name="uq_patient_identifiers"),
)

identity_history = Table(
    "identity_history", metadata, _id(), _patient(),
    Column("at", TS, nullable=False),
    Column("message_id", BigInteger),
    Column("action", String(32), nullable=False),
    Column("detail", Text),
)

timeline_events = Table(
    "timeline_events", metadata, _id(), _patient(),
    Column("type", String(16), nullable=False),
    Column("key", String(512), nullable=False),
    Column("status", String(16), nullable=False),
    Column("at", TS, index=True),
    Column("title", String(512)),
    Column("code", String(64)),
    Column("data", Text),
    Column("message_id", BigInteger, nullable=False),
    Column("last_message_id", BigInteger, nullable=False),
    Column("confidentiality", String(4)),
    Column("masked_ps", Boolean, nullable=False, default=False),
    Column("invisible_patient", Boolean, nullable=False, default=False),
    Column("invisible_legal", Boolean, nullable=False, default=False),
    Column("author_id", String(64)),
    Column("redundant_of", BigId),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    UniqueConstraint("type", "key", name="uq_timeline_events"),
)

stays = Table(
    "stays", metadata, _id(), _patient(),
    Column("key", String(512), nullable=False, unique=True),
    Column("facility", String(255)),
    Column("visit_number", String(255)),
    Column("status", String(16), nullable=False),
    Column("patient_class", String(8)),
    Column("admitted_at", TS),
    Column("discharged_at", TS),
    Column("location", String(255)),
    Column("medical_ward", String(255)),
    Column("event_id", BigId),
)

movements = Table(
    "movements", metadata, _id(), _patient(),
    Column("stay_id", BigId, ForeignKey("stays.id"), index=True),
    Column("key", String(512), nullable=False, unique=True),
    Column("trigger", String(8)),
    Column("cancels", String(64)),  # pending cancellation: the triggers it will cancel
    Column("status", String(16), nullable=False),  # active, cancelled, pending_cancel, used
    Column("at", TS),
    Column("patient_class", String(8)),
    Column("location", String(255)),
    Column("medical_ward", String(255)),
    Column("nursing_ward", String(255)),
    Column("data", Text),
    Column("message_id", BigInteger, nullable=False),
    Column("last_message_id", BigInteger, nullable=False),
    Column("event_id", BigId),
)

observations = Table(
    "observations", metadata, _id(), _patient(),
    Column("event_id", BigId, ForeignKey("timeline_events.id"), nullable=False, index=True),
    Column("key", String(512), nullable=False),
    Column("loinc", String(16), index=True),
    Column("component", String(255)),
    Column("system", String(255)),
    Column("display", String(512)),
    Column("outcome", String(16)),
    Column("value", String(64)),
    Column("value_num", Float),
    Column("value_text", Text),
    Column("comparator", String(4)),
    Column("unit", String(64)),
    Column("reference_low", String(64)),
    Column("reference_high", String(64)),
    Column("abnormal_flag", String(16)),
    Column("status", String(4)),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("performing_lab", String(255)),
    Column("observed_at", TS),
    Column("original_code", String(64)),
    Column("original_system", String(64)),
    Column("original_value", String(255)),
    Column("original_unit", String(64)),
    Column("message_id", BigInteger, nullable=False),
    UniqueConstraint("event_id", "key", name="uq_observations"),
)

documents = Table(
    "documents", metadata, _id(), _patient(),
    Column("event_id", BigId, ForeignKey("timeline_events.id"), index=True),
    # A document is (source, id, patient): the custodian (else the sending facility) that
    # issued it, its ClinicalDocument/id, and the patient it was filed for. The same id from
    # another source or for another patient is another document, never a move (issue #15).
    Column("source", String(255), nullable=False, server_default=""),
    Column("document_id", String(255), nullable=False),
    Column("set_id", String(255), index=True),
    Column("version", String(16)),
    Column("parent_id", String(255)),
    Column("type_code", String(32)),
    Column("title", String(512)),
    Column("effective_time", TS),
    Column("confidentiality", String(4)),
    Column("author_id", String(64)),
    Column("status", String(16), nullable=False),  # active, replaced, deleted
    Column("content", LargeBinary),
    Column("content_type", String(64)),
    Column("masked_ps", Boolean, nullable=False, default=False),
    Column("invisible_patient", Boolean, nullable=False, default=False),
    Column("invisible_legal", Boolean, nullable=False, default=False),
    Column("message_id", BigInteger, nullable=False),
)

# Identity and document conflicts held for an operator (issue #15): an INS contradicting the
# one held for a local id, demographics contradicting a qualified identity, a replacement or
# deletion naming a document of another patient or source. `envelope` keeps the events of a
# held message until an operator decides; `evidence` what the operator needs to decide.
timeline_conflicts = Table(
    "timeline_conflicts", metadata, _id(),
    Column("kind", String(32), nullable=False),
    Column("status", String(16), nullable=False),  # open, resolved
    Column("held", Boolean, nullable=False, default=False),
    Column("patient_id", BigId, ForeignKey("patients.id"), index=True),
    Column("other_patient_id", BigId),
    Column("message_id", BigInteger, nullable=False, index=True),
    Column("other_message_id", BigInteger),
    Column("last_message_id", BigInteger, nullable=False),
    Column("occurrences", Integer, nullable=False, default=1),
    Column("fingerprint", String(255), nullable=False, index=True),
    Column("evidence", Text, nullable=False),
    Column("envelope", Text),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("resolved_at", TS),
    Column("resolved_by", String(128)),
    Column("resolution", Text),
)

orders = Table(
    "orders", metadata, _id(), _patient(),
    Column("event_id", BigId, ForeignKey("timeline_events.id"), index=True),
    Column("key", String(512), nullable=False, unique=True),
    Column("test", String(128), index=True),  # comparison key: LN|code or system|code
    Column("prescriber", String(255)),
    Column("ordered_at", TS),
    Column("status", String(16), nullable=False),
    Column("redundant_of", BigId, ForeignKey("orders.id")),
    Column("message_id", BigInteger, nullable=False),
)

appointments = Table(
    "appointments", metadata, _id(), _patient(),
    Column("event_id", BigId, ForeignKey("timeline_events.id"), index=True),
    Column("key", String(512), nullable=False, unique=True),
    Column("start", TS),
    Column("end", TS),
    Column("status", String(16), nullable=False),
    Column("message_id", BigInteger, nullable=False),
)

consents = Table(
    "consents", metadata, _id(), _patient(),
    Column("at", TS),
    Column("message_id", BigInteger, nullable=False),
    Column("dmp_status", String(32)),
    Column("feeding_opposition", Boolean),
    Column("consultation_consent", Boolean),
    Column("data", Text),
)

users = Table(
    "users", metadata, _id(),
    Column("username", String(128), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # admin, operator, clinician
    Column("professional_id", String(64), index=True),  # RPPS/ADELI, as in PV1-7 XCN-1
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", TS, nullable=False),
)

api_tokens = Table(
    "api_tokens", metadata, _id(),
    Column("user_id", BigId, ForeignKey("users.id"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),  # SHA-256, never the token
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS),
    Column("revoked_at", TS),
)

care_circle = Table(
    "care_circle", metadata, _id(), _patient(),
    Column("professional_id", String(64), index=True),
    Column("user_id", BigId, ForeignKey("users.id")),
    Column("source", String(16), nullable=False),  # adt (PV1-7/8/9/17) or grant
    Column("role", String(32)),
    Column("first_at", TS, nullable=False),
    Column("last_at", TS, nullable=False),
    Column("until", TS),
    Column("granted_by", String(128)),
    Column("revoked_at", TS),
    Column("message_id", BigInteger),
)

audit_log = Table(
    "audit_log", metadata, _id(),
    Column("at", TS, nullable=False, index=True),
    Column("actor", String(128), nullable=False),
    Column("role", String(16)),
    Column("patient_id", BigInteger, index=True),  # no FK: the log outlives merges
    Column("action", String(64), nullable=False),
    Column("detail", Text),
    Column("remote", String(128)),
    Column("outcome", String(16), nullable=False),
)

applied_events = Table(
    "applied_events", metadata,
    Column("message_id", BigInteger, primary_key=True),
    Column("event_type", String(32), primary_key=True),  # change_identifier is 17
    Column("event_key", String(512), primary_key=True),
    Column("applied_at", TS, nullable=False),
    # The delivery generation applied last (0 = first routing, + 1 per replay/reprocess).
    Column("generation", Integer, nullable=False, server_default="0"),
)

Index("ix_care_circle_patient_professional", care_circle.c.patient_id,
      care_circle.c.professional_id)
Index("ix_documents_source_document", documents.c.source, documents.c.document_id)
Index("ix_timeline_events_patient_at", timeline_events.c.patient_id, timeline_events.c.at)
Index("ix_observations_patient_loinc_observed", observations.c.patient_id, observations.c.loinc,
      observations.c.observed_at)  # migration 0011_fhir
