"""Reading one timeline row for FHIR: exists, readable by the caller, not masked, not a
tombstone. The order of the checks is what keeps a read outside the care circle from
telling whether the resource exists (404 either way), while a reader who may see the
patient learns that a deleted item is gone (410)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from engine.fhir.context import Context
from engine.fhir.outcome import FhirError
from engine.fhir.search import int_id
from engine.timeline.models import timeline_events

GONE = ("deleted",)


def row_for_read(ctx: Context, stmt: Any, name: str, gone: bool = False,
                 item: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row `stmt` selects (it must have patient_id and the masking columns), after the
    care circle and masking checks; `gone` → 410 once those pass."""
    row = ctx.conn.execute(stmt).mappings().first()
    if row is None:
        raise FhirError(404, f"{name} not found")
    out = dict(row)
    pid = int(out["patient_id"])
    ctx.readable(pid, name)
    if not ctx.visible(item or out, pid):
        raise FhirError(404, f"{name} not found")
    if gone:
        ctx.shown.add(pid)
        raise FhirError(410, f"{name} was deleted", code="deleted")
    return out


def event_columns() -> list[Any]:
    ev = timeline_events.c
    return [ev.status.label("event_status"), ev.masked_ps, ev.confidentiality, ev.author_id,
            ev.updated_at, ev.at.label("event_at")]


def event_id(resource_id: str, prefix: str = "") -> int:
    n = int_id(resource_id, prefix)
    return -1 if n is None else n


def event_select(kind: str, resource_id: str) -> Any:
    ev = timeline_events.c
    return select(timeline_events).where(ev.id == event_id(resource_id), ev.type == kind)


def with_event(table: Any) -> Any:
    """SELECT of `table` with its timeline event's data, update time and masking columns."""
    ev = timeline_events.c
    return select(table, ev.data.label("event_data"), ev.updated_at, ev.masked_ps,
                  ev.confidentiality, ev.author_id).outerjoin(
        timeline_events, ev.id == table.c.event_id)
