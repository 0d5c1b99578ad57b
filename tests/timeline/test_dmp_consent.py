"""ZFA opposition recorded by the timeline stops DMP submissions (issues #5 and #7 joined)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from channels.outbound.base import OutboundItem
from channels.outbound.dmp import OPPOSED
from connectors.mllp.client import MLLPClient
from engine.timeline.consent import consent_check_for, feeding_opposed
from tests.conftest import corpus
from tests.routing.test_delivery_e2e import wait_status
from transformers.hl7.ack import read_ack

ROUTES = """\
version: 1
channels:
  main: {type: mllp, host: 127.0.0.1, port: 0}
destinations:
  timeline: {type: timeline}
routes:
  - name: adt-timeline
    when: {message_type: ADT}
    transform: [adt_events]
    to: [timeline]
"""


def item(patient_key: str) -> OutboundItem:
    return OutboundItem(delivery_id=1, message_id=1, route="r", destination="dmp",
                        payload=b"", content_type="application/xml", patient_key=patient_key,
                        attempt=1, idempotency_key="k")


async def test_opposition_blocks_and_consent_allows(make_engine: Any, store_url: str,
                                                    tmp_path: Path) -> None:
    folder = corpus("hl7v2", "ans", "Vague_2", "Consentement_DMP_PAMFR")
    opposed = (folder / "NonConsentementConsultation_OppositionAlimentation.er7").read_bytes()
    eng = await make_engine(ROUTES, route=True, store_url=store_url)
    async with MLLPClient("127.0.0.1", eng.port()) as c:
        assert read_ack(await c.send(opposed))[0] in ("AA", "CA")
    [row] = await wait_status(eng, 1)
    key = eng.store.get_message(row["id"])["patient_key"]
    assert key and feeding_opposed(eng.store.engine, key)
    check = consent_check_for(eng.store.engine)
    assert await check(item(key)) == (False, OPPOSED)
    # The same patient by INS only (a lab that knows just the INS) is stopped too.
    assert await check(item("INS|279035121518989")) == (False, OPPOSED)
    # An unknown patient is let through: the DMP decides.
    assert await check(item("OTHER&1.2.3&ISO|999")) == (True, "")


async def test_non_opposition_allows(make_engine: Any, tmp_path: Path) -> None:
    folder = corpus("hl7v2", "ans", "Vague_2", "Consentement_DMP_PAMFR")
    allowed = (folder / "ConsentementConsultation_NonOppositionAlimentation.er7").read_bytes()
    eng = await make_engine(ROUTES, route=True)
    async with MLLPClient("127.0.0.1", eng.port()) as c:
        await c.send(allowed)
    [row] = await wait_status(eng, 1)
    key = eng.store.get_message(row["id"])["patient_key"]
    assert not feeding_opposed(eng.store.engine, key)
