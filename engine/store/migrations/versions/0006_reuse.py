"""Reused control ids (issue #15): a content digest per message, so an identical resend is
told from new content under a seen MSH-10 / ClinicalDocument/id, and the operator's flag
pointing at the first message stored under that id.

Revision ID: 0006_reuse
Revises: 0005_dmp_feed
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_reuse"
down_revision = "0005_dmp_feed"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Nullable columns: ADD COLUMN on both SQLite and PostgreSQL, no table rebuild. Rows
    # stored before have no digest; the store computes it from their raw bytes when a new
    # arrival meets one (rare, and only for those rows).
    op.add_column("messages", sa.Column("content_digest", sa.String(64)))
    op.add_column("messages", sa.Column("reuse_of", BigId))
    op.create_index("ix_messages_reuse_of", "messages", ["reuse_of"])


def downgrade() -> None:
    op.drop_index("ix_messages_reuse_of", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("reuse_of")
        batch.drop_column("content_digest")
