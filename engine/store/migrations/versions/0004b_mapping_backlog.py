"""Mapping backlog: local laboratory codes waiting for a LOINC mapping (issue #4).

Revision ID: 0004b_mapping_backlog
Revises: 0003_application_ack
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004b_mapping_backlog"
down_revision = "0003_application_ack"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mapping_backlog",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("performing_lab", sa.String(255), nullable=False),
        sa.Column("code", sa.String(255), nullable=False),
        sa.Column("coding_system", sa.String(64), nullable=False),
        sa.Column("text", sa.String(512)),
        sa.Column("unit", sa.String(64)),
        sa.Column("reason", sa.String(64)),
        sa.Column("example_value", sa.String(255)),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("loinc", sa.String(16)),
        sa.UniqueConstraint("sender", "performing_lab", "code", "coding_system",
                            name="uq_mapping_backlog"),
    )
    op.create_index("ix_mapping_backlog_status", "mapping_backlog", ["status"])
    op.create_table(
        "mapping_backlog_messages",
        sa.Column("backlog_id", BigId, sa.ForeignKey("mapping_backlog.id"), primary_key=True),
        sa.Column("message_id", BigId, sa.ForeignKey("messages.id"), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("mapping_backlog_messages")
    op.drop_table("mapping_backlog")
