"""ORU → timeline events (`transformers.events.oru.oru_events`), LOINC/UCUM normalisation
included.

The exchange is built as intake and the router build it (`engine.router.exchange_from_bytes`),
with the message type forced to ORU so every input reaches the transformer. A bug is any
exception other than `EventError` (the route fails with a reason an operator can read), or
events that cannot be stored as JSON.
"""

from __future__ import annotations

import json

from fuzz import seeds
from fuzz.harness import Harness, check
from transformers.events.common import EventError


def exchange_for(data: bytes):  # type: ignore[no-untyped-def]
    from engine.routing.router import exchange_from_bytes

    exchange = exchange_from_bytes(data, channel="fuzz")
    exchange.headers["message_type"] = "ORU"
    return exchange


def target(data: bytes) -> None:
    from transformers.events.oru import oru_events

    out = oru_events(exchange_for(data))
    if out is not None:
        body, _ = out.payload()
        check(isinstance(json.loads(body), dict | list), "events are not JSON")


# 4 KiB holds an MSH, a PID and a dozen OBX (see oru_crbio): longer inputs repeat paths.
HARNESS = Harness("oru_events", target, (EventError,), seeds.oru_messages, max_len=4096)
