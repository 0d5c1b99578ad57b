"""A patient seen by a hospital (ADT naming a doctor) and by three laboratories (glucose in
g/L, mmol/L and mg/dL on three days): what the clinician's pages are tested on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import routes_text
from tests.routing.test_delivery_e2e import wait_status
from transformers.hl7.batch import split_messages

DATA = Path(__file__).resolve().parents[1] / "loinc" / "data"
DOCTOR = "10001234567"  # RPPS named in PV1-7: in the care circle through the ADT

ROUTES = routes_text(
    destinations="{timeline: {type: timeline}}",
    routes="""
  - {name: adt-timeline, when: {message_type: ADT}, transform: [adt_events], to: [timeline]}
  - {name: lab-timeline, when: {message_type: ORU}, transform: [oru_events], to: [timeline]}
""")


def adt(trigger: str, control_id: str, when: str) -> bytes:
    return "\r".join([
        f"MSH|^~\\&|GAM|CHU-DEMO|PARCOURS|ARS-IDF|{when}||ADT^{trigger}^ADT_A01|{control_id}"
        "|P|2.5",
        f"EVN|{trigger}|{when}",
        "PID|1||DEMO000123^^^PARCOURS-DEMO^PI||PATIENT^DEMO||19700101|F",
        f"PV1|1|I|CARDIO^101^1^CHU-DEMO||||{DOCTOR}^MARTIN^Claire|||||||||||V-77^^^CHU-DEMO^VN"
        f"|||||||||||||||||||||||||{when}",
    ]).encode() + b"\r"


def lab_results() -> list[bytes]:
    """The three demo labs' ORUs, moved to three different days."""
    out = []
    for day, f in zip(("20250110", "20250114", "20250121"),
                      sorted(DATA.glob("oru_*_full.hl7")), strict=True):
        for raw in split_messages(f.read_bytes()).messages:
            out.append(raw.replace(b"20250114080000", f"{day}080000".encode()))
    return out


async def load_patient(eng: Any) -> None:
    await eng.send(adt("A01", "ADT-1", "20250109100000"))
    for raw in lab_results():
        await eng.send(raw)
    await eng.send(adt("A03", "ADT-2", "20250122160000"))
    await wait_status(eng, 5)


def patient_id(eng: Any) -> int:
    from sqlalchemy import select

    from engine.timeline.models import patient_identifiers as pi

    with eng.store.engine.connect() as conn:
        return int(conn.execute(select(pi.c.patient_id).where(
            pi.c.value == "DEMO000123")).scalar_one())
