"""What a resource handler gets for one request: the caller, the store, and access checks.

The checks are the timeline's own (engine/timeline: `care_circle.may_read`,
`care_circle.has_grant`, `masking.visible`, `identity.survivor`, `audit.record`), so FHIR
and /api/v1 cannot disagree about who sees what. A handler builds patient references with
`patient_ref`, which is also how the router knows which patients a response showed (the
audit row lists them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, false, or_, select
from sqlalchemy.engine import Connection

from engine.fhir.outcome import FhirError
from engine.timeline import audit
from engine.timeline.auth import Principal
from engine.timeline.care_circle import has_grant, may_read
from engine.timeline.identity import survivor
from engine.timeline.masking import visible
from engine.timeline.models import care_circle, patients

if TYPE_CHECKING:
    from engine.fhir.registry import Registry
    from engine.timeline import Timeline

PATIENT_ROLES = ("admin", "clinician")  # as /api/v1 (engine/timeline/service.py)


@dataclass
class Context:
    timeline: Timeline
    registry: Registry
    who: Principal
    remote: str | None
    base: str  # absolute base URL of the API, e.g. https://host/fhir/r4
    conn: Connection
    shown: set[int] = field(default_factory=set)  # patients whose data the response holds
    denied: set[int] = field(default_factory=set)
    _may: dict[int, bool] = field(default_factory=dict)
    _granted: dict[int, bool] = field(default_factory=dict)

    @property
    def db(self) -> Any:
        return self.timeline.db

    # -- access ---------------------------------------------------------------------------

    def reads_patients(self) -> bool:
        return self.who.role in PATIENT_ROLES

    def may_read(self, patient_id: int) -> bool:
        if patient_id not in self._may:
            self._may[patient_id] = self.reads_patients() and may_read(
                self.conn, self.who, patient_id, self.timeline.settings.care_circle_days)
        return self._may[patient_id]

    def granted(self, patient_id: int) -> bool:
        if patient_id not in self._granted:
            self._granted[patient_id] = has_grant(self.conn, self.who, patient_id)
        return self._granted[patient_id]

    def visible(self, item: dict[str, Any], patient_id: int) -> bool:
        """Masking (MASQUE_PS, confidentiality V) exactly as /api/v1 applies it."""
        return visible(item, self.who, self.granted(patient_id))

    def survivor(self, patient_id: int) -> int:
        return survivor(self.conn, patient_id)

    def readable(self, patient_id: int, resource: str) -> None:
        """404 unless the caller may read this patient: the same answer whether the
        resource exists or not (a read outside the care circle says nothing)."""
        if not self.may_read(patient_id):
            self.denied.add(patient_id)
            raise FhirError(404, f"{resource} not found")

    def scope(self) -> list[int] | None:
        """Patients a search without `patient` may return: None = every patient (admin),
        else the ones the care circle lets the caller read."""
        if self.who.role == "admin":
            return None
        if not self.reads_patients():
            return []
        conds = []
        if self.who.professional_id:
            conds.append(care_circle.c.professional_id == self.who.professional_id)
        if self.who.user_id is not None:
            conds.append(care_circle.c.user_id == self.who.user_id)
        if not conds:
            return []
        candidates = self.conn.execute(select(care_circle.c.patient_id).where(
            or_(*conds), care_circle.c.revoked_at.is_(None)).distinct()).scalars().all()
        return sorted({int(p) for p in candidates if self.may_read(int(p))})

    def patient_exists(self, patient_id: int) -> bool:
        return self.conn.execute(select(patients.c.id).where(patients.c.id == patient_id)
                                 ).first() is not None

    # -- building resources ---------------------------------------------------------------

    def patient_ref(self, patient_id: int) -> dict[str, str]:
        self.shown.add(patient_id)
        return {"reference": f"Patient/{patient_id}"}

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    def audit(self, action: str, detail: dict[str, Any]) -> None:
        """One audit row per patient shown (or one without a patient), allowed or denied."""
        if self.denied and not self.shown:
            audit.record(self.db, self.who, action, patient_ids=sorted(self.denied),
                         remote=self.remote, outcome="denied", detail=detail)
            return
        audit.record(self.db, self.who, action, patient_ids=sorted(self.shown) or None,
                     remote=self.remote, detail=detail)

    def granted_patients(self) -> list[int]:
        """Patients with an explicit grant to the caller (what V documents require)."""
        conds = []
        if self.who.user_id is not None:
            conds.append(care_circle.c.user_id == self.who.user_id)
        if self.who.professional_id:
            conds.append(care_circle.c.professional_id == self.who.professional_id)
        if not conds:
            return []
        rows = self.conn.execute(select(care_circle.c.patient_id).where(
            care_circle.c.source == "grant", or_(*conds)).distinct()).scalars().all()
        return sorted(int(p) for p in rows if self.granted(int(p)))

    def masking_clause(self, masked_ps: Any, confidentiality: Any, author_id: Any,
                       patient_id: Any) -> Any:
        """`masking.visible` as SQL, so that totals and pages count only what the caller
        may see; handlers still pass each row through `visible` before showing it."""
        me = self.who.professional_id
        mine = (author_id == me) if me else false()
        return and_(or_(masked_ps.is_(False), mine),
                    or_(confidentiality.is_(None), confidentiality != "V", mine,
                        patient_id.in_(self.granted_patients())))
