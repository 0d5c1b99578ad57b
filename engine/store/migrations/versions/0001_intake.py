"""Intake: messages and inbound files.

Revision ID: 0001_intake
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_intake"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inbound_files",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.UniqueConstraint("channel", "name", "sha256", name="uq_inbound_file"),
    )
    op.create_table(
        "messages",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("remote", sa.String(128)),
        sa.Column("sending_application", sa.String(255)),
        sa.Column("sending_facility", sa.String(255)),
        sa.Column("message_type", sa.String(16)),
        sa.Column("trigger_event", sa.String(16)),
        sa.Column("structure", sa.String(16)),
        sa.Column("control_id", sa.String(199)),
        sa.Column("version", sa.String(32)),
        sa.Column("processing_id", sa.String(8)),
        sa.Column("charset", sa.String(32)),
        sa.Column("patient_key", sa.String(255)),
        sa.Column("application_ack_type", sa.String(2)),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Integer(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("ack_code", sa.String(2)),
        sa.Column("ack", sa.LargeBinary()),
        sa.Column("dedup_key", sa.String(40), unique=True),
        sa.Column("duplicate_of", BigId, sa.ForeignKey("messages.id")),
        sa.Column("file_id", BigId, sa.ForeignKey("inbound_files.id")),
    )
    op.create_index("ix_messages_status_id", "messages", ["status", "id"])
    op.create_index("ix_messages_received_at", "messages", ["received_at"])
    op.create_index("ix_messages_patient_key", "messages", ["patient_key"])
    op.create_index("ix_messages_control_id", "messages", ["control_id"])


def downgrade() -> None:
    op.drop_table("messages")
    op.drop_table("inbound_files")
