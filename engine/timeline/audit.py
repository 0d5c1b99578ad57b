"""The audit log of patient data reads: who, which patient, what, when, from where.

Append-only: this module only inserts, and the migration's triggers refuse UPDATE/DELETE.
Denied attempts are written too — an attempt to read outside one's care circle is exactly
what an audit is for.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from .auth import Principal
from .models import audit_log


def record(db: Engine, who: Principal | None, action: str, *, patient_ids: list[int] | None,
           remote: str | None, outcome: str = "allowed",
           detail: dict[str, Any] | None = None) -> None:
    now = datetime.now(UTC)
    rows = [{"at": now, "actor": who.username if who else "anonymous",
             "role": who.role if who else None, "patient_id": pid, "action": action,
             "detail": json.dumps(detail or {}, ensure_ascii=False, sort_keys=True),
             "remote": remote, "outcome": outcome}
            for pid in (patient_ids or [None])]
    with db.begin() as conn:
        conn.execute(insert(audit_log), rows)


def entries(db: Engine, patient_id: int | None = None, limit: int = 1000
            ) -> list[dict[str, Any]]:
    q = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if patient_id is not None:
        q = q.where(audit_log.c.patient_id == patient_id)
    with db.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]
