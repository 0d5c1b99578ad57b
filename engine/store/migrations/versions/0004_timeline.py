"""Coordination timeline: patients, identities, events, documents, users, care circle, audit.

Issue #5. Tables match engine/timeline/models.py (tests/timeline/test_migration.py compares
them). The audit log is append-only: triggers refuse UPDATE and DELETE on SQLite and
PostgreSQL alike, so not even a bug in Parcours can rewrite who read what.

Revision ID: 0004_timeline
Revises: 0003_application_ack
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_timeline"
down_revision = "0003_application_ack"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)

_PG_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
"""


def upgrade() -> None:
    op.create_table(
        "applied_events",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.String(length=16), nullable=False),
        sa.Column("event_key", sa.String(length=512), nullable=False),
        sa.Column("applied_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("message_id", "event_type", "event_key"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=True),
        sa.Column("patient_id", sa.BigInteger(), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("remote", sa.String(length=128), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"], unique=False)
    op.create_index(op.f("ix_audit_log_patient_id"), "audit_log", ["patient_id"], unique=False)
    op.create_table(
        "patients",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("merged_into", BigId, nullable=True),
        sa.Column("family", sa.String(length=255), nullable=True),
        sa.Column("given", sa.String(length=255), nullable=True),
        sa.Column("birth_date", sa.String(length=8), nullable=True),
        sa.Column("sex", sa.String(length=8), nullable=True),
        sa.Column("identity_status", sa.String(length=16), nullable=True),
        sa.Column("ins", sa.String(length=64), nullable=True),
        sa.Column("ins_authority", sa.String(length=64), nullable=True),
        sa.Column("demographics_message_id", sa.BigInteger(), nullable=True),
        sa.Column("dmp_status", sa.String(length=32), nullable=True),
        sa.Column("dmp_feeding_opposition", sa.Boolean(), nullable=True),
        sa.Column("dmp_consultation_consent", sa.Boolean(), nullable=True),
        sa.Column("consent_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["merged_into"],
            ["patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "users",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("professional_id", sa.String(length=64), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_index(op.f("ix_users_professional_id"), "users", ["professional_id"], unique=False)
    op.create_table(
        "api_tokens",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"], unique=False)
    op.create_table(
        "care_circle",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("professional_id", sa.String(length=64), nullable=True),
        sa.Column("user_id", BigId, nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("first_at", TS, nullable=False),
        sa.Column("last_at", TS, nullable=False),
        sa.Column("until", TS, nullable=True),
        sa.Column("granted_by", sa.String(length=128), nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_care_circle_patient_id"), "care_circle", ["patient_id"], unique=False)
    op.create_index(
        "ix_care_circle_patient_professional",
        "care_circle",
        ["patient_id", "professional_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_care_circle_professional_id"), "care_circle", ["professional_id"], unique=False
    )
    op.create_table(
        "consents",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("at", TS, nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("dmp_status", sa.String(length=32), nullable=True),
        sa.Column("feeding_opposition", sa.Boolean(), nullable=True),
        sa.Column("consultation_consent", sa.Boolean(), nullable=True),
        sa.Column("data", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_consents_patient_id"), "consents", ["patient_id"], unique=False)
    op.create_table(
        "identity_history",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_identity_history_patient_id"), "identity_history", ["patient_id"], unique=False
    )
    op.create_table(
        "patient_identifiers",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("authority", sa.String(length=255), nullable=False),
        sa.Column("namespace", sa.String(length=255), nullable=True),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("authority", "value", name="uq_patient_identifiers"),
    )
    op.create_index(
        op.f("ix_patient_identifiers_patient_id"),
        "patient_identifiers",
        ["patient_id"],
        unique=False,
    )
    op.create_table(
        "stays",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("facility", sa.String(length=255), nullable=True),
        sa.Column("visit_number", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("patient_class", sa.String(length=8), nullable=True),
        sa.Column("admitted_at", TS, nullable=True),
        sa.Column("discharged_at", TS, nullable=True),
        sa.Column("location", sa.String(length=255), nullable=True),
        sa.Column("medical_ward", sa.String(length=255), nullable=True),
        sa.Column("event_id", BigId, nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index(op.f("ix_stays_patient_id"), "stays", ["patient_id"], unique=False)
    op.create_table(
        "timeline_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("at", TS, nullable=True),
        sa.Column("title", sa.String(length=512), nullable=True),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("data", sa.Text(), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("last_message_id", sa.BigInteger(), nullable=False),
        sa.Column("confidentiality", sa.String(length=4), nullable=True),
        sa.Column("masked_ps", sa.Boolean(), nullable=False),
        sa.Column("invisible_patient", sa.Boolean(), nullable=False),
        sa.Column("invisible_legal", sa.Boolean(), nullable=False),
        sa.Column("author_id", sa.String(length=64), nullable=True),
        sa.Column("redundant_of", BigId, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("type", "key", name="uq_timeline_events"),
    )
    op.create_index(op.f("ix_timeline_events_at"), "timeline_events", ["at"], unique=False)
    op.create_index(
        "ix_timeline_events_patient_at", "timeline_events", ["patient_id", "at"], unique=False
    )
    op.create_index(
        op.f("ix_timeline_events_patient_id"), "timeline_events", ["patient_id"], unique=False
    )
    op.create_table(
        "appointments",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("event_id", BigId, nullable=True),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("start", TS, nullable=True),
        sa.Column("end", TS, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["timeline_events.id"],
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index(op.f("ix_appointments_event_id"), "appointments", ["event_id"], unique=False)
    op.create_index(
        op.f("ix_appointments_patient_id"), "appointments", ["patient_id"], unique=False
    )
    op.create_table(
        "documents",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("event_id", BigId, nullable=True),
        sa.Column("document_id", sa.String(length=255), nullable=False),
        sa.Column("set_id", sa.String(length=255), nullable=True),
        sa.Column("version", sa.String(length=16), nullable=True),
        sa.Column("parent_id", sa.String(length=255), nullable=True),
        sa.Column("type_code", sa.String(length=32), nullable=True),
        sa.Column("title", sa.String(length=512), nullable=True),
        sa.Column("effective_time", TS, nullable=True),
        sa.Column("confidentiality", sa.String(length=4), nullable=True),
        sa.Column("author_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("content_type", sa.String(length=64), nullable=True),
        sa.Column("masked_ps", sa.Boolean(), nullable=False),
        sa.Column("invisible_patient", sa.Boolean(), nullable=False),
        sa.Column("invisible_legal", sa.Boolean(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["timeline_events.id"],
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("document_id"),
    )
    op.create_index(op.f("ix_documents_event_id"), "documents", ["event_id"], unique=False)
    op.create_index(op.f("ix_documents_patient_id"), "documents", ["patient_id"], unique=False)
    op.create_index(op.f("ix_documents_set_id"), "documents", ["set_id"], unique=False)
    op.create_table(
        "movements",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("stay_id", BigId, nullable=True),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("trigger", sa.String(length=8), nullable=True),
        sa.Column("cancels", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("at", TS, nullable=True),
        sa.Column("patient_class", sa.String(length=8), nullable=True),
        sa.Column("location", sa.String(length=255), nullable=True),
        sa.Column("medical_ward", sa.String(length=255), nullable=True),
        sa.Column("nursing_ward", sa.String(length=255), nullable=True),
        sa.Column("data", sa.Text(), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("last_message_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", BigId, nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.ForeignKeyConstraint(
            ["stay_id"],
            ["stays.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index(op.f("ix_movements_patient_id"), "movements", ["patient_id"], unique=False)
    op.create_index(op.f("ix_movements_stay_id"), "movements", ["stay_id"], unique=False)
    op.create_table(
        "observations",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("event_id", BigId, nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("loinc", sa.String(length=16), nullable=True),
        sa.Column("component", sa.String(length=255), nullable=True),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("display", sa.String(length=512), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("value", sa.String(length=64), nullable=True),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("value_text", sa.Text(), nullable=True),
        sa.Column("comparator", sa.String(length=4), nullable=True),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("reference_low", sa.String(length=64), nullable=True),
        sa.Column("reference_high", sa.String(length=64), nullable=True),
        sa.Column("abnormal_flag", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=4), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("performing_lab", sa.String(length=255), nullable=True),
        sa.Column("observed_at", TS, nullable=True),
        sa.Column("original_code", sa.String(length=64), nullable=True),
        sa.Column("original_system", sa.String(length=64), nullable=True),
        sa.Column("original_value", sa.String(length=255), nullable=True),
        sa.Column("original_unit", sa.String(length=64), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["timeline_events.id"],
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", "key", name="uq_observations"),
    )
    op.create_index(op.f("ix_observations_event_id"), "observations", ["event_id"], unique=False)
    op.create_index(op.f("ix_observations_loinc"), "observations", ["loinc"], unique=False)
    op.create_index(
        op.f("ix_observations_patient_id"), "observations", ["patient_id"], unique=False
    )
    op.create_table(
        "orders",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("event_id", BigId, nullable=True),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("test", sa.String(length=128), nullable=True),
        sa.Column("prescriber", sa.String(length=255), nullable=True),
        sa.Column("ordered_at", TS, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("redundant_of", BigId, nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["timeline_events.id"],
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.ForeignKeyConstraint(
            ["redundant_of"],
            ["orders.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index(op.f("ix_orders_event_id"), "orders", ["event_id"], unique=False)
    op.create_index(op.f("ix_orders_patient_id"), "orders", ["patient_id"], unique=False)
    op.create_index(op.f("ix_orders_test"), "orders", ["test"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_APPEND_ONLY)
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    op.drop_index(op.f("ix_orders_test"), table_name="orders")
    op.drop_index(op.f("ix_orders_patient_id"), table_name="orders")
    op.drop_index(op.f("ix_orders_event_id"), table_name="orders")
    op.drop_table("orders")
    op.drop_index(op.f("ix_observations_patient_id"), table_name="observations")
    op.drop_index(op.f("ix_observations_loinc"), table_name="observations")
    op.drop_index(op.f("ix_observations_event_id"), table_name="observations")
    op.drop_table("observations")
    op.drop_index(op.f("ix_movements_stay_id"), table_name="movements")
    op.drop_index(op.f("ix_movements_patient_id"), table_name="movements")
    op.drop_table("movements")
    op.drop_index(op.f("ix_documents_set_id"), table_name="documents")
    op.drop_index(op.f("ix_documents_patient_id"), table_name="documents")
    op.drop_index(op.f("ix_documents_event_id"), table_name="documents")
    op.drop_table("documents")
    op.drop_index(op.f("ix_appointments_patient_id"), table_name="appointments")
    op.drop_index(op.f("ix_appointments_event_id"), table_name="appointments")
    op.drop_table("appointments")
    op.drop_index(op.f("ix_timeline_events_patient_id"), table_name="timeline_events")
    op.drop_index("ix_timeline_events_patient_at", table_name="timeline_events")
    op.drop_index(op.f("ix_timeline_events_at"), table_name="timeline_events")
    op.drop_table("timeline_events")
    op.drop_index(op.f("ix_stays_patient_id"), table_name="stays")
    op.drop_table("stays")
    op.drop_index(op.f("ix_patient_identifiers_patient_id"), table_name="patient_identifiers")
    op.drop_table("patient_identifiers")
    op.drop_index(op.f("ix_identity_history_patient_id"), table_name="identity_history")
    op.drop_table("identity_history")
    op.drop_index(op.f("ix_consents_patient_id"), table_name="consents")
    op.drop_table("consents")
    op.drop_index(op.f("ix_care_circle_professional_id"), table_name="care_circle")
    op.drop_index("ix_care_circle_patient_professional", table_name="care_circle")
    op.drop_index(op.f("ix_care_circle_patient_id"), table_name="care_circle")
    op.drop_table("care_circle")
    op.drop_index(op.f("ix_api_tokens_user_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_index(op.f("ix_users_professional_id"), table_name="users")
    op.drop_table("users")
    op.drop_table("patients")
    op.drop_index(op.f("ix_audit_log_patient_id"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_at"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("applied_events")
