"""Retention, search and history import (issue #16).

- `messages.pruned_at`: when the raw bytes and the delivery payloads were dropped by a
  retention pass; the row's metadata stays searchable.
- `messages.origin`: "history" for messages loaded by `parcours import --routes-as history`
  (only routes with `history: true` take them); NULL for live arrivals.
- Search indexes for the message filters (engine/ui/messages.py): channel, type/trigger and
  the bare patient id (the part of `patient_key` after "authority|"), each ending in id so
  the newest-first page is read from the index; (received_at, id) on PostgreSQL, so a date
  range's ids come from the index alone; `duplicate_of` for the pruner's reference check.

Revision ID: 0013_prune
Revises: 0012_dac
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_prune"
down_revision = "0012_dac"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("messages", sa.Column("pruned_at", TS))
    op.add_column("messages", sa.Column("origin", sa.String(16)))
    op.create_index("ix_messages_channel_id", "messages", ["channel", "id"])
    op.create_index("ix_messages_type_id", "messages", ["message_type", "trigger_event", "id"])
    op.create_index("ix_messages_duplicate_of", "messages", ["duplicate_of"])
    sqlite = op.get_bind().dialect.name == "sqlite"
    if not sqlite:  # SQLite's ix_messages_received_at already holds the rowid
        op.create_index("ix_messages_received_id", "messages", ["received_at", "id"])
    find = "instr(patient_key, '|')" if sqlite else "strpos(patient_key, '|')"
    op.execute(f"CREATE INDEX ix_messages_patient_bare ON messages "
               f"(substr(patient_key, {find} + 1))")


def downgrade() -> None:
    op.execute("DROP INDEX ix_messages_patient_bare")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_index("ix_messages_received_id", "messages")
    op.drop_index("ix_messages_duplicate_of", "messages")
    op.drop_index("ix_messages_type_id", "messages")
    op.drop_index("ix_messages_channel_id", "messages")
    op.drop_column("messages", "origin")
    op.drop_column("messages", "pruned_at")
