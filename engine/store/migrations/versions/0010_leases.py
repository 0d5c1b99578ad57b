"""Partition leases with fencing tokens, and the live engine processes (issue #12).

Revision ID: 0010_leases
Revises: 0008_values
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_leases"
down_revision = "0008_values"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "partition_leases",
        sa.Column("partition", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("token", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("expires_at", TS),
    )
    op.create_table(
        "engine_members",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("engine_members")
    op.drop_table("partition_leases")
