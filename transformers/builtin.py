"""Transformers shipped with Parcours, by the names routes.yaml uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .exchange import Exchange

Transformer = Callable[[Exchange], Exchange | None]


def identity(exchange: Exchange) -> Exchange:
    """The message as received (the default when a route has no transform)."""
    return exchange


def hl7_to_json(exchange: Exchange) -> Exchange:
    """A generic JSON view of an HL7 v2 message: segments → fields → repetitions → components.

    For systems that want JSON without an HL7 parser; values are decoded (escapes resolved).
    """
    msg = exchange.message
    if msg is None:
        return exchange
    segments: list[dict[str, Any]] = []
    for seg in msg.segments:
        fields: dict[str, Any] = {}
        first = 3 if seg.name == "MSH" else 1
        for n in range(first, len(seg.fields)):
            reps = seg.repetitions(n)
            if not reps or reps == [""]:
                continue
            values = []
            for r in range(1, len(reps) + 1):
                comps = seg.components(n, r)
                values.append(comps[0] if len(comps) == 1 else comps)
            fields[str(n)] = values[0] if len(values) == 1 else values
        segments.append({"segment": seg.name, "fields": fields})
    exchange.body = {
        "message_id": exchange.message_id,
        "channel": exchange.channel,
        "type": exchange.headers.get("message_code"),
        "control_id": exchange.headers.get("control_id"),
        "segments": segments,
    }
    exchange.content_type = "application/json"
    return exchange


def event_summary(exchange: Exchange) -> Exchange:
    """A small JSON event (type, ids, patient key) for systems that only need to be told."""
    h = exchange.headers
    exchange.body = {
        "message_id": exchange.message_id,
        "channel": exchange.channel,
        "type": h.get("message_code"),
        "control_id": h.get("control_id"),
        "sending_application": h.get("sending_application"),
        "sending_facility": h.get("sending_facility"),
        "patient_key": h.get("patient_key"),
        "received_at": h.get("received_at"),
    }
    exchange.content_type = "application/json"
    return exchange


def normalise_lab(exchange: Exchange) -> Exchange | None:
    """LOINC/UCUM normalisation of an ORU (loaded on first use: the catalogue is large)."""
    from .lab.transformer import normalise_lab as run

    return run(exchange)


def _events(module: str, name: str) -> Transformer:
    """Timeline event transformers (issue #5), imported on first use like normalise_lab."""

    def run(exchange: Exchange) -> Exchange | None:
        import importlib

        return getattr(importlib.import_module(f"transformers.events.{module}"), name)(exchange)

    run.__name__ = name
    run.__doc__ = f"transformers.events.{module}.{name}"
    return run


def crbio(exchange: Exchange) -> Exchange | None:
    """ORU^R01 → CR-BIO CDA document for the DMP (loaded on first use)."""
    from .cda.to_crbio import to_crbio

    return to_crbio(exchange)


BUILTIN: dict[str, Transformer] = {
    "identity": identity,
    "normalise_lab": normalise_lab,
    "hl7_to_json": hl7_to_json,
    "event_summary": event_summary,
    "adt_events": _events("adt", "adt_events"),
    "oru_events": _events("oru", "oru_events"),
    "mdm_events": _events("oru", "mdm_events"),
    "orm_events": _events("orm", "orm_events"),
    "siu_events": _events("siu", "siu_events"),
    "cda_events": _events("cda", "cda_events"),
    "ref_events": _events("ref", "ref_events"),
    "referral_response": _events("ref", "referral_response"),
    "crbio": crbio,
}
