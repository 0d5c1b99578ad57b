"""DMP feeding consent for the `dmp` destination, from what ZFA recorded on the patient.

The dmp destination asks before each submission; a patient who opposed feeding the DMP
(ZFA, IHE PAM FR) gets no submission, and the delivery says why. Unknown patients are let
through: the DMP itself refuses what it must, and intake order across facilities is not
guaranteed (a lab result may arrive before the hospital's ADT that carries the consent).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from engine.timeline.models import patient_identifiers, patients


def _candidates(patient_key: str) -> list[tuple[str, str]]:
    authority, _, value = patient_key.rpartition("|")
    if authority == "INS":
        return [("INS", value)]
    parts = authority.split("&")  # CX-4: namespace & universal id (OID) & type
    out = []
    if len(parts) > 1 and parts[1]:
        out.append((parts[1], value))
    if parts[0]:
        out.append((parts[0], value))
    return out


def feeding_opposed(engine: Engine, patient_key: str | None) -> bool:
    if not patient_key:
        return False
    with engine.connect() as conn:
        for authority, value in _candidates(patient_key):
            if authority == "INS":
                q = select(patients.c.dmp_feeding_opposition, patients.c.merged_into).where(
                    patients.c.ins == value)
            else:
                q = (select(patients.c.dmp_feeding_opposition, patients.c.merged_into)
                     .join(patient_identifiers,
                           patient_identifiers.c.patient_id == patients.c.id)
                     .where(patient_identifiers.c.authority == authority,
                            patient_identifiers.c.value == value))
            row = conn.execute(q).first()
            if row is not None:
                if row.merged_into is not None:
                    survivor = conn.execute(select(patients.c.dmp_feeding_opposition).where(
                        patients.c.id == row.merged_into)).scalar()
                    return bool(survivor)
                return bool(row.dmp_feeding_opposition)
    return False


def consent_check_for(engine: Engine) -> Any:
    from channels.outbound.dmp import OPPOSED

    async def check(item: Any) -> tuple[bool, str]:
        import asyncio

        if await asyncio.to_thread(feeding_opposed, engine, item.patient_key):
            return False, OPPOSED
        return True, ""

    return check
