"""Enhanced mode: the application acknowledgement sent after routing.

Revision ID: 0003_application_ack
Revises: 0002_deliveries
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_application_ack"
down_revision = "0002_deliveries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("app_ack_code", sa.String(2)))
        batch.add_column(sa.Column("app_ack", sa.LargeBinary()))
        batch.add_column(sa.Column("app_ack_status", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("app_ack_status")
        batch.drop_column("app_ack")
        batch.drop_column("app_ack_code")
