"""`normalise_lab`: the routes.yaml transformer around `normalise_observations`.

The catalogue and mappings are loaded once and shared; `configure` points them at a site's
own mapping folder and `reload_mappings` picks up an accepted mapping without a restart.
"""

from __future__ import annotations

import threading
import time
from dataclasses import fields, is_dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from loinc.catalogue import Catalogue, load_catalogue
from mappings.loader import MappingSet, load_mappings
from transformers.exchange import Exchange
from transformers.lab.er7 import Er7Error, observations_from_oru
from transformers.normalise import normalise_observations

DEFAULT_MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


class LabContext:
    def __init__(self, mapping_dir: Path = DEFAULT_MAPPINGS) -> None:
        self.mapping_dir = mapping_dir
        self._lock = threading.Lock()
        self._catalogue: Catalogue | None = None
        self._mappings: MappingSet | None = None
        self._stamp: float = 0.0
        self._checked: float = 0.0

    @property
    def catalogue(self) -> Catalogue:
        with self._lock:
            if self._catalogue is None:
                self._catalogue = load_catalogue()
            return self._catalogue

    def _files_stamp(self) -> float:
        return max((p.stat().st_mtime for p in self.mapping_dir.glob("*.y*ml")), default=0.0)

    @property
    def mappings(self) -> MappingSet:
        """Reloaded when a mapping file changes (checked at most every 5 s), so a mapping an
        operator accepts from the command line reaches a running engine without a restart."""
        cat = self.catalogue
        with self._lock:
            now = time.monotonic()
            if self._mappings is not None and now - self._checked > 5.0:
                self._checked = now
                if self._files_stamp() != self._stamp:
                    self._mappings = None
            if self._mappings is None:
                self._stamp = self._files_stamp()
                self._checked = now
                self._mappings = load_mappings(self.mapping_dir, catalogue=cat)
            return self._mappings

    def reload_mappings(self) -> None:
        with self._lock:
            self._mappings = None


_context = LabContext()


def configure(mapping_dir: Path) -> LabContext:
    global _context
    _context = LabContext(mapping_dir)
    return _context


def context() -> LabContext:
    return _context


_FIELDS: dict[type, tuple[str, ...]] = {}
_LEAVES = frozenset({str, int, float, bool, type(None)})


def plain(value: Any) -> Any:
    """A dataclass as JSON-ready data (Decimal as text, tuples as lists): `asdict` would
    `copy.deepcopy` every leaf value, which cost more CPU than normalising the observation
    (a profile of routing an ORU showed it)."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is Decimal:
        return str(value)
    names = _FIELDS.get(kind)
    if names is None and is_dataclass(value) and not isinstance(value, type):
        names = _FIELDS[kind] = tuple(f.name for f in fields(value))
    if names is not None:
        out = {}
        for n in names:
            v = getattr(value, n)
            out[n] = v if type(v) in _LEAVES else plain(v)
        return out
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def normalise_exchange(exchange: Exchange) -> dict[str, Any]:
    """Normalised observations of an ORU, as plain JSON-ready data (also used by oru events)."""
    ctx = _context
    charset = exchange.message.charset if exchange.message is not None else (
        exchange.headers.get("charset") or "utf-8")
    sender, raw_obs = observations_from_oru(exchange.text, charset)
    result = normalise_observations(raw_obs, sender=sender, catalogue=ctx.catalogue,
                                    mappings=ctx.mappings)
    observations = [plain(o) for o in result.observations]
    backlog = [plain(b) for b in result.backlog]
    counts: dict[str, int] = {}
    for o in result.observations:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    return {"sender": sender, "observations": observations, "backlog": backlog,
            "counts": counts}


def normalise_lab(exchange: Exchange) -> Exchange | None:
    """ORU^R01 → JSON: each OBX with LOINC, canonical value/unit/range and its original.

    Unmapped codes are kept as received and reported in `headers["mapping_backlog"]`, which
    the engine records in the mapping backlog.
    """
    if exchange.message is None or exchange.headers.get("message_type") != "ORU":
        return exchange
    try:
        data = normalise_exchange(exchange)
    except Er7Error as exc:
        raise ValueError(f"ORU could not be read for normalisation: {exc}") from None
    exchange.headers["mapping_backlog"] = data["backlog"]
    exchange.headers["normalisation_counts"] = data["counts"]
    exchange.body = {
        "message_id": exchange.message_id,
        "control_id": exchange.headers.get("control_id"),
        "sender": data["sender"],
        "patient_key": exchange.headers.get("patient_key"),
        "observations": data["observations"],
    }
    exchange.content_type = "application/json"
    return exchange
