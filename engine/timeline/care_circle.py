"""The care circle: who may read a patient's timeline.

A clinician is in the circle when (a) a PV1-7/8/9/17 of the patient's ADT named them (by
professional id, XCN-1 = users.professional_id) within the last `care_circle_days`, or (b)
an explicit, unrevoked, unexpired grant (`parcours care-circle grant`) names them. Admins
read every patient (audited); operators read none.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from engine.timeline.auth import Principal
from engine.timeline.identity import survivor
from engine.timeline.models import care_circle, patients, users


def may_read(conn: Connection, who: Principal, patient_id: int, circle_days: float) -> bool:
    if who.role == "admin":
        return True
    if who.role != "clinician":
        return False
    now = datetime.now(UTC)
    conds = []
    if who.professional_id:
        conds.append((care_circle.c.source == "adt")
                     & (care_circle.c.professional_id == who.professional_id)
                     & (care_circle.c.last_at >= now - timedelta(days=circle_days)))
        conds.append((care_circle.c.source == "grant")
                     & (care_circle.c.professional_id == who.professional_id))
    if who.user_id is not None:
        conds.append((care_circle.c.source == "grant") & (care_circle.c.user_id == who.user_id))
    if not conds:
        return False
    q = select(care_circle.c.id).where(
        care_circle.c.patient_id == patient_id, care_circle.c.revoked_at.is_(None),
        or_(care_circle.c.until.is_(None), care_circle.c.until > now), or_(*conds))
    return conn.execute(q).first() is not None


def has_grant(conn: Connection, who: Principal, patient_id: int) -> bool:
    """Explicit grants only: what very restricted (V) documents require."""
    now = datetime.now(UTC)
    conds = []
    if who.user_id is not None:
        conds.append(care_circle.c.user_id == who.user_id)
    if who.professional_id:
        conds.append(care_circle.c.professional_id == who.professional_id)
    if not conds:
        return False
    return conn.execute(select(care_circle.c.id).where(
        care_circle.c.patient_id == patient_id, care_circle.c.source == "grant",
        care_circle.c.revoked_at.is_(None),
        or_(care_circle.c.until.is_(None), care_circle.c.until > now), or_(*conds))
    ).first() is not None


def grant(db: Engine, patient_id: int, username: str, granted_by: str,
          days: float | None = None) -> int:
    now = datetime.now(UTC)
    with db.begin() as conn:
        user = conn.execute(select(users).where(users.c.username == username)
                            ).mappings().first()
        if user is None:
            raise ValueError(f"no user {username!r}")
        if conn.execute(select(patients.c.id).where(patients.c.id == patient_id)
                        ).first() is None:
            raise ValueError(f"no patient {patient_id} (the timeline patient id, as shown "
                             "by `parcours audit` or the patient page's address)")
        patient_id = survivor(conn, patient_id)
        return int(conn.execute(insert(care_circle).values(
            patient_id=patient_id, professional_id=user["professional_id"], user_id=user["id"],
            source="grant", role="grant", first_at=now, last_at=now,
            until=now + timedelta(days=days) if days else None, granted_by=granted_by,
        ).returning(care_circle.c.id)).scalar_one())


def revoke(db: Engine, patient_id: int, username: str) -> int:
    with db.begin() as conn:
        uid = conn.execute(select(users.c.id).where(users.c.username == username)).scalar()
        if uid is None:
            return 0
        return conn.execute(update(care_circle).where(
            care_circle.c.patient_id == survivor(conn, patient_id),
            care_circle.c.user_id == uid, care_circle.c.source == "grant",
            care_circle.c.revoked_at.is_(None)).values(revoked_at=datetime.now(UTC))).rowcount
