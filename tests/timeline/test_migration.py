"""0004_timeline builds exactly the tables of engine/timeline/models.py, on both stores, and
the audit log refuses to be rewritten."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, update
from sqlalchemy.exc import DBAPIError

from engine.store.database import Store
from engine.timeline.models import audit_log, metadata


def test_schema_matches_models_and_audit_is_append_only(store_url: str) -> None:
    store = Store(store_url)
    try:
        store.migrate()
        with store.engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), metadata)
        ours = set(metadata.tables)
        relevant = [d for d in diffs if not (d[0] == "remove_table" and d[1].name not in ours)
                    and not (d[0] in ("remove_index", "remove_column")
                             and getattr(d[1], "table", None) is not None
                             and d[1].table.name not in ours)]
        relevant = [d for d in relevant
                    if not (isinstance(d, tuple) and d[0] == "remove_column"
                            and d[2] not in ours)]
        assert relevant == []
        with store.engine.begin() as conn:
            conn.execute(insert(audit_log).values(at=datetime.now(UTC), actor="a",
                                                  action="timeline", outcome="allowed"))
        with pytest.raises(DBAPIError), store.engine.begin() as conn:
            conn.execute(update(audit_log).values(actor="someone else"))
        with pytest.raises(DBAPIError), store.engine.begin() as conn:
            conn.execute(audit_log.delete())
    finally:
        store.close()
