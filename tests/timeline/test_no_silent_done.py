"""Nothing the timeline cannot use ends "done" in silence, and a failure that retrying
cannot fix never holds the patient's line as if it were a passing conflict."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import insert, select

from channels.outbound.base import OutboundItem
from engine.store.models import deliveries, messages
from engine.timeline import batch
from engine.timeline.apply import Applier
from engine.timeline.destination import TimelineDestination
from engine.timeline.models import applied_events, observations
from tests.routing.test_delivery_e2e import wait_status
from transformers.hl7.ack import read_ack

from .conftest import FHIR, TL, events_of, read
from .test_e2e import ROUTES

PARCOURS = [sys.executable, "-c", "from engine.cli.main import main; main()"]


def _cr(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def oru_with_first_group_twice() -> bytes:
    """The FHIR-Converter LAB-ORU-1 sample (a hemogram and a differential), its first OBR
    group (OBR + OBX + SPM) sent a second time in the same message, as a third-party lab
    feed does."""
    lines = _cr(read(*FHIR, "LAB-ORU-1.hl7")).split(b"\r")
    obr = [i for i, line in enumerate(lines) if line.startswith(b"OBR|")]
    group = lines[obr[0]:obr[1]]
    return b"\r".join(lines[:obr[1]] + group + lines[obr[1]:])


async def _deliveries(eng: Any) -> list[dict[str, Any]]:
    with eng.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(
            deliveries.c.id, deliveries.c.status, deliveries.c.last_error,
            deliveries.c.response, deliveries.c.attempts)).mappings()]


async def test_same_obr_group_twice_is_applied_once(make_engine: Any, store_url: str) -> None:
    raw = oru_with_first_group_twice()
    eng = await make_engine(ROUTES, store_url=store_url, route=True)
    assert read_ack(await eng.send(raw))[0] == "AA"
    await wait_status(eng, 1, ("done",))
    [d] = await _deliveries(eng)
    assert d["status"] == "delivered" and d["attempts"] == 1
    with eng.store.engine.connect() as conn:
        obs = conn.execute(select(observations.c.original_code)).scalars().all()
    assert len(obs) == 10 and len(set(obs)) == 10  # both groups, each observation once
    evs = events_of(raw, 1)["events"]
    assert len(evs) == 3 and evs[0] == evs[1]  # the group really is there twice


async def test_message_with_no_timeline_event_is_dead_lettered(
        make_engine: Any, store_url: str) -> None:
    """ADT^A60 (the FHIR-Converter sample): valid, acknowledged, but no movement, merge or
    demographics the timeline interprets: the operator is told, the message is not "done"."""
    eng = await make_engine(ROUTES, store_url=store_url, route=True)
    assert read_ack(await eng.send(_cr(read(*FHIR, "ADT-A60-01.hl7"))))[0] == "AA"
    [row] = await wait_status(eng, 1, ("failed",))
    [d] = await _deliveries(eng)
    assert d["status"] == "dead" and "no timeline event" in d["last_error"]
    assert "ADT^A60" in d["last_error"]
    env = {"PARCOURS_STORE_URL": eng.store.url, "PATH": "/usr/bin:/bin"}
    listing = await asyncio.to_thread(
        subprocess.run, [*PARCOURS, "deliveries", "--status", "dead"],
        capture_output=True, text=True, env=env, timeout=60)
    assert "no timeline event" in listing.stdout, listing.stderr
    with eng.store.engine.connect() as conn:
        status = conn.execute(select(messages.c.status).where(
            messages.c.id == row["id"])).scalar_one()
    assert status == "failed"


class _Breaking(Applier):
    """Breaks the applied_events primary key for real on the first `times` tries of the
    store (each call of Timeline.apply_many / apply), then applies. A try breaks on both of
    its paths: the set-based chunk (engine/timeline/batch.py) and the envelope-at-a-time
    apply it falls back to, as a row the database refuses would."""

    def __init__(self, settings: Any, times: int, timeline: Any,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(settings)
        self.left = times
        self.breaking = False
        for name in ("apply", "apply_many"):
            monkeypatch.setattr(timeline, name, self._try(getattr(timeline, name)))
        flush = batch._Chunk.flush

        def breaking_flush(chunk: Any) -> None:
            if self.breaking:
                row = (1, "x", "x", None, 0)
                chunk.raw.many("INSERT INTO applied_events (message_id, event_type, "
                               "event_key, applied_at, generation) VALUES (?, ?, ?, ?, ?)",
                               [row, row])
            flush(chunk)
        monkeypatch.setattr(batch._Chunk, "flush", breaking_flush)

    def _try(self, inner: Any) -> Any:
        def one_try(*args: Any) -> Any:
            self.breaking, self.left = self.left > 0, self.left - 1
            return inner(*args)
        return one_try

    def apply(self, conn: Any, env: dict[str, Any], generation: int = 0) -> dict[str, int]:
        if self.breaking:
            row = {"message_id": 1, "event_type": "x", "event_key": "x", "applied_at": None}
            conn.execute(insert(applied_events), [row, row])
        return super().apply(conn, env, generation)


def _item(raw: bytes, message_id: int) -> OutboundItem:
    import json

    env = events_of(raw, message_id)
    return OutboundItem(delivery_id=7, message_id=message_id, route="r", destination="timeline",
                        payload=json.dumps(env).encode(), content_type="application/json",
                        patient_key=None, attempt=1, idempotency_key="k",
                        headers={"message_type": "ORU", "trigger_event": "R01"})


@pytest.mark.parametrize(("times", "kind"), [(1, "delivered"), (2, "dead")])
async def test_race_is_retried_at_once_a_deterministic_conflict_dead_letters(
        store_url: str, times: int, kind: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A conflict that a second try clears was a race; one that comes back is in the data:
    dead-lettered at once with its reason and logged with the message id, never retried
    for minutes behind the patient's next messages."""
    tl = TL(store_url)
    dest = TimelineDestination("timeline", {}, tl.timeline)
    tl.timeline.applier = _Breaking(tl.timeline.settings, times, tl.timeline, monkeypatch)
    with caplog.at_level(logging.INFO, logger="parcours.timeline"):
        outcome = await dest.send(_item(_cr(read(*FHIR, "LAB-ORU-1.hl7")), 4242))
    assert outcome.kind == kind, outcome.detail
    if kind == "dead":
        assert "constraint" in outcome.detail and "every try" in outcome.detail
        [rec] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert rec.__dict__["message_id"] == 4242
        assert "x" not in str(rec.__dict__.get("constraint")).split(".")  # names, not values
    else:
        assert tl.rows(observations)  # applied on the second try
    tl.store.close()
