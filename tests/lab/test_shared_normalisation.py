"""One reading and one normalisation per message, shared by its routes (issue #12): the
shared path must give exactly what each transformer computed alone, and must not be reused
once a chain changed the text it came from."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from engine.routing.router import exchange_from_row
from transformers.events.oru import oru_events
from transformers.exchange import Exchange
from transformers.lab.transformer import normalise_lab, shared_normalisation

DATA = Path(__file__).resolve().parents[1] / "loinc" / "data"


def _exchange(raw: bytes) -> Exchange:
    return exchange_from_row({"id": 7, "channel": "lab", "raw": raw, "charset": "utf-8",
                              "received_at": datetime(2026, 11, 25, tzinfo=UTC),
                              "message_type": "ORU", "trigger_event": "R01",
                              "patient_key": "P1"})


def _alone(ex: Exchange) -> Exchange:
    """The same exchange with nothing shared: each transformer reads and normalises alone."""
    return ex.copy(shared={})


def test_routes_share_one_normalisation_and_get_the_same_results() -> None:
    for path in sorted(DATA.glob("oru_*_full.hl7")):
        raw = path.read_bytes().replace(b"\n", b"\r")
        ex = _exchange(raw)
        lab = normalise_lab(ex.copy())
        first = ex.shared["lab.normalisation"]
        events = oru_events(ex.copy())
        assert ex.shared["lab.normalisation"] is first  # not normalised a second time
        assert lab is not None and events is not None
        lab_alone = normalise_lab(_alone(ex))
        events_alone = oru_events(_alone(ex))
        assert lab_alone is not None and events_alone is not None
        assert json.dumps(lab.body, sort_keys=True, default=str) == json.dumps(
            lab_alone.body, sort_keys=True, default=str)
        assert json.dumps(events.body, sort_keys=True, default=str) == json.dumps(
            events_alone.body, sort_keys=True, default=str), path.name
        assert lab.headers["mapping_backlog"] == lab_alone.headers["mapping_backlog"]


def test_a_changed_text_is_normalised_again() -> None:
    raw = (DATA / "oru_labo-bio-paris15_12.hl7").read_bytes().replace(b"\n", b"\r")
    ex = _exchange(raw)
    before = shared_normalisation(ex.copy())
    changed = ex.copy()
    # A user transformer earlier in the chain rewrote the first OBX's value.
    first_obx = next(s for s in ex.message.segments if s.name == "OBX")  # type: ignore[union-attr]
    fields = first_obx.raw.split("|")
    fields[5] = "999"
    changed.text = ex.text.replace(first_obx.raw, "|".join(fields))
    after = shared_normalisation(changed)
    assert after is not before
    assert after.raw[0].value == "999" and before.raw[0].value != "999"
    assert after.message is None  # read from the changed text, not the router's reading
