"""The referral tables (issue #14). Migration 0012_dac builds them.

On the timeline's MetaData: a referral belongs to a timeline patient, and its history rows
are what the patient's timeline shows. Rows are never deleted: a cancellation that arrives
before its request is kept as a tombstone the request finds later.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, ForeignKey, String, Table, Text

from engine.timeline.models import BigId, metadata

TS = DateTime(timezone=True)

# The support structures (DAC) Parcours serves: a REF addressed to another structure is
# answered AE. `id` is what PRD-7 (type FINESS) and FHIR Organization.identifier carry.
support_structures = Table(
    "support_structures", metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("created_at", TS, nullable=False),
)

# The coordinators of a structure: who sees its worklist and joins the care circle of the
# patients whose request it accepted.
structure_members = Table(
    "structure_members", metadata,
    Column("structure_id", String(64), ForeignKey("support_structures.id"), primary_key=True),
    Column("user_id", BigId, ForeignKey("users.id"), primary_key=True),
    Column("created_at", TS, nullable=False),
)

referrals = Table(
    "referrals", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # RF1-6 with its assigning authority (FHIR: ServiceRequest.identifier system|value).
    Column("key", String(512), nullable=False, unique=True),
    Column("identifier", String(255), nullable=False),
    Column("authority", String(255), nullable=False),
    Column("patient_id", BigId, ForeignKey("patients.id"), nullable=False, index=True),
    Column("structure_id", String(64), index=True),
    Column("status", String(16), nullable=False),  # the DAC workflow (workflow.STATUSES)
    Column("tombstone", Boolean, nullable=False, default=False),  # cancelled before known
    Column("priority", String(16)),  # stat, asap, routine (HL7 0280 / FHIR request-priority)
    Column("type", String(64)),
    Column("reason", String(512)),
    Column("requester", Text),  # JSON: the PRD with role RP / the FHIR requester
    Column("performer", Text),  # JSON: the PRD with role RT / the FHIR performer
    Column("coordinator", String(128)),  # username assigned by the DAC
    Column("authored_at", TS, index=True),
    Column("expires_at", TS),
    Column("closed_at", TS),
    Column("data", Text),  # JSON: diagnoses, notes, observations, disposition
    Column("source", String(8), nullable=False),  # hl7 | fhir
    Column("message_id", BigId),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
)

# Who did what, when: each row is also a timeline event of the patient (type "referral").
referral_history = Table(
    "referral_history", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("referral_id", BigId, ForeignKey("referrals.id"), nullable=False, index=True),
    Column("at", TS, nullable=False),
    Column("action", String(32), nullable=False),  # created, modified, accepted, note, …
    Column("status", String(16), nullable=False),
    Column("actor", String(255)),
    Column("detail", Text),
    Column("message_id", BigId),
)
