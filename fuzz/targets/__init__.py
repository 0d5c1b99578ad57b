"""One module per harness; `HARNESSES` maps each harness name to its `Harness`."""

from __future__ import annotations

from importlib import import_module

from fuzz.harness import Harness

NAMES = (
    "mllp_framing",
    "msh_header",
    "hl7_reader",
    "ack_builder",
    "batch_split",
    "cda_header",
    "routes_loader",
    "oru_events",
    "oru_crbio",
)


def load(name: str) -> Harness:
    if name not in NAMES:
        raise KeyError(f"unknown harness {name!r} (known: {', '.join(NAMES)})")
    harness: Harness = import_module(f"fuzz.targets.{name}").HARNESS
    return harness
