"""History import keeps two times (issue #16): `messages.imported_at`.

`parcours import` stores a message under its original time — MSH-7, else the file's mtime —
in `received_at`, the column the search by date, the retention clocks and the dedup window
read, so years of history land on their own dates; `imported_at` says when the import
loaded it. NULL for live arrivals, whose `received_at` is the moment Parcours received them.
A plain ADD COLUMN of a nullable column with no index: nothing added to intake's insert
beyond one more NULL parameter.

Revision ID: 0014_prune
Revises: 0013_prune
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_prune"
down_revision = "0013_prune"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("imported_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("messages", "imported_at")
