"""Referrals to support structures (DAC), their history, structures and members (issue #14).

Revision ID: 0012_dac
Revises: 0011_fhir
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_dac"
down_revision = "0011_fhir"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "support_structures",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "structure_members",
        sa.Column("structure_id", sa.String(64), sa.ForeignKey("support_structures.id"),
                  primary_key=True),
        sa.Column("user_id", BigId, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "referrals",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(512), nullable=False, unique=True),
        sa.Column("identifier", sa.String(255), nullable=False),
        sa.Column("authority", sa.String(255), nullable=False),
        sa.Column("patient_id", BigId, sa.ForeignKey("patients.id"), nullable=False,
                  index=True),
        sa.Column("structure_id", sa.String(64), index=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("tombstone", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("priority", sa.String(16)),
        sa.Column("type", sa.String(64)),
        sa.Column("reason", sa.String(512)),
        sa.Column("requester", sa.Text()),
        sa.Column("performer", sa.Text()),
        sa.Column("coordinator", sa.String(128)),
        sa.Column("authored_at", TS, index=True),
        sa.Column("expires_at", TS),
        sa.Column("closed_at", TS),
        sa.Column("data", sa.Text()),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("message_id", BigId),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "referral_history",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("referral_id", BigId, sa.ForeignKey("referrals.id"), nullable=False,
                  index=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(255)),
        sa.Column("detail", sa.Text()),
        sa.Column("message_id", BigId),
    )


def downgrade() -> None:
    for name in ("referral_history", "referrals", "structure_members", "support_structures"):
        op.drop_table(name)
