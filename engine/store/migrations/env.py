"""Alembic environment: the engine comes from engine.store.migrate (never from an ini file)."""

from __future__ import annotations

from alembic import context

from engine.store.models import metadata

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
