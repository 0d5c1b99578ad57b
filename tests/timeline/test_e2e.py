"""End to end: ADT and ORU over MLLP → default-style routes → timeline → API with a token."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from engine.timeline import auth
from tests.conftest import routes_text

from .conftest import ANS, DOCS, read

ROUTES = routes_text(
    destinations="{timeline: {type: timeline}}",
    routes="""
  - {name: adt-timeline, when: {message_type: ADT}, transform: [adt_events], to: [timeline]}
  - {name: lab-timeline, when: {message_type: ORU}, transform: [oru_events], to: [timeline]}
""")


async def test_mllp_to_api(make_engine: Any, tmp_path: Path) -> None:
    eng = await make_engine(ROUTES, store_url=f"sqlite:///{tmp_path / 'e.db'}", http=True,
                            route=True)
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    adt = read(*ANS, "Vague_2", "Consentement_DMP_PAMFR",
               "ConsentementConsultation_NonOppositionAlimentation.er7")
    oru = read(*DOCS, "ORU", "Transmission_initiale_ORU", "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7")
    for raw in (adt, oru):
        ack = await eng.send(raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r"))
        assert b"MSA|AA" in ack
    _, token = auth.add_user(eng.store.engine, "reault", "clinician", "801234567897")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        for _ in range(300):
            r = await c.get("/api/v1/patients", params={"identifier": "INS|279035121518989"})
            found = r.json()["patients"]
            if found:
                t = await c.get(f"/api/v1/patients/{found[0]['id']}/timeline")
                types = {e["type"] for e in t.json()["events"]}
                if {"stay", "movement", "document"} <= types:
                    break
            await asyncio.sleep(0.1)
        else:
            from sqlalchemy import select

            from engine.store.models import delivery_attempts
            from engine.timeline.models import timeline_events

            with eng.store.engine.connect() as conn:
                rows = conn.execute(select(delivery_attempts.c.delivery_id,
                                           delivery_attempts.c.detail)).all()
                evs = conn.execute(select(timeline_events.c.patient_id, timeline_events.c.type,
                                          timeline_events.c.status)).all()
            raise AssertionError(f"timeline never complete: {rows} {evs} {found}")
        doc = next(e for e in t.json()["events"] if e["type"] == "document")
        d = await c.get(f"/api/v1/documents/{doc['document_id']}")
        assert d.status_code == 200 and b"ClinicalDocument" in d.content
        # the ADT (local id + INS) and the ORU (INS only) landed on one patient
        assert len(found) == 1
