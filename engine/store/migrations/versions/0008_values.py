"""Values (issue #15): the timeline remembers which generation of a message it applied, so an
operator's replay, a reprocess or an accepted mapping (generation + 1) replaces what readers
see, while the same delivery again still changes nothing.

Revision ID: 0008_values
Revises: 0007_identity
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_values"
down_revision = "0007_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOT NULL with a server default: ADD COLUMN on both SQLite and PostgreSQL, no rebuild;
    # rows applied before this revision were generation 0 (the first routing).
    op.add_column("applied_events", sa.Column("generation", sa.Integer(), nullable=False,
                                              server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("applied_events") as batch:
        batch.drop_column("generation")
