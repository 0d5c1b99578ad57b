"""DMP feed (issue #7): the DMP's error codes on deliveries, and the document versions the
`dmp` destination numbered per set (successive corrections replace the latest version).

Revision ID: 0005_dmp_feed
Revises: 0004_timeline, 0004b_mapping_backlog (merges the two branches)
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_dmp_feed"
down_revision = ("0004_timeline", "0004b_mapping_backlog")
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # A nullable column: ADD COLUMN on both SQLite and PostgreSQL, no table rebuild.
    op.add_column("deliveries", sa.Column("error_code", sa.String(255)))
    op.create_table(
        "dmp_documents",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("set_id", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("unique_id", sa.String(255), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("destination", "idempotency_key", name="uq_dmp_documents_key"),
        sa.UniqueConstraint("destination", "set_id", "version",
                            name="uq_dmp_documents_version"),
    )


def downgrade() -> None:
    op.drop_table("dmp_documents")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("error_code")
