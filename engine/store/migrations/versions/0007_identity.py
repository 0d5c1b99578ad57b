"""Identity vigilance and document provenance (issue #15, "The wrong patient").

- `documents.source` (custodian, else sending facility); a document is (source, id, patient),
  so `document_id` alone is no longer unique. Existing rows get the custodian their timeline
  event recorded, and their event key the new form.
- `timeline_conflicts`: identity and document conflicts held for an operator.
- `applied_events.event_type` widened: `change_identifier` (A47) did not fit, so PostgreSQL
  refused every A47.

Revision ID: 0007_identity
Revises: 0006_reuse
Create Date: 2026-12-01
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0007_identity"
down_revision = "0006_reuse"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
# 0004 created the unique constraint on documents.document_id without a name: SQLite's batch
# mode needs one to drop it (Alembic "dropping unnamed constraints"); PostgreSQL named it.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.drop_constraint("documents_document_id_key", "documents", type_="unique")
        op.add_column("documents", sa.Column("source", sa.String(255), nullable=False,
                                             server_default=""))
    else:
        with op.batch_alter_table("documents", naming_convention=NAMING) as batch:
            batch.drop_constraint("uq_documents_document_id", type_="unique")
            batch.add_column(sa.Column("source", sa.String(255), nullable=False,
                                       server_default=""))
    with op.batch_alter_table("applied_events") as batch:
        batch.alter_column("event_type", type_=sa.String(32), existing_type=sa.String(16),
                           existing_nullable=False)
    op.create_index("ix_documents_source_document", "documents", ["source", "document_id"])
    rows = bind.execute(sa.text(
        "SELECT d.id, d.document_id, d.patient_id, e.id AS event_id, e.data FROM documents d "
        "JOIN timeline_events e ON e.id = d.event_id")).mappings().all()
    for r in rows:
        try:
            source = (json.loads(r["data"] or "{}").get("custodian") or "")[:255]
        except ValueError:
            source = ""
        bind.execute(sa.text("UPDATE documents SET source = :s WHERE id = :i"),
                     {"s": source, "i": r["id"]})
        bind.execute(sa.text("UPDATE timeline_events SET key = :k WHERE id = :i"),
                     {"k": f"{source}|{r['document_id']}|{r['patient_id']}"[:512],
                      "i": r["event_id"]})
    op.create_table(
        "timeline_conflicts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.Column("patient_id", BigId, sa.ForeignKey("patients.id"), nullable=True),
        sa.Column("other_patient_id", BigId, nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("other_message_id", sa.BigInteger(), nullable=True),
        sa.Column("last_message_id", sa.BigInteger(), nullable=False),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(255), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("resolved_by", sa.String(128), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
    )
    for col in ("patient_id", "message_id", "fingerprint"):
        op.create_index(f"ix_timeline_conflicts_{col}", "timeline_conflicts", [col])


def downgrade() -> None:
    op.drop_table("timeline_conflicts")
    op.drop_index("ix_documents_source_document", table_name="documents")
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("source")
        batch.create_unique_constraint("uq_documents_document_id", ["document_id"])
