"""`normalise_lab`: the routes.yaml transformer around `normalise_observations`.

The catalogue and mappings are loaded once and shared; `configure` points them at a site's
own mapping folder and `reload_mappings` picks up an accepted mapping without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from decimal import Decimal
from operator import attrgetter
from pathlib import Path
from typing import Any

from loinc.catalogue import Catalogue, load_catalogue
from mappings.loader import MappingSet, load_mappings
from transformers.exchange import Exchange
from transformers.hl7.reader import Message
from transformers.lab.er7 import Er7Error, observations_from_message, observations_from_oru
from transformers.lab.observation import NormalisationResult, RawObservation
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


_FIELDS: dict[type, tuple[tuple[str, ...], Callable[[Any], Any]]] = {}
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
    known = _FIELDS.get(kind)
    if known is None and is_dataclass(value) and not isinstance(value, type):
        names = tuple(f.name for f in fields(value))
        # attrgetter of several names returns a tuple; of one, the value alone.
        getter: Callable[[Any], Any] = (
            attrgetter(*names) if len(names) > 1
            else (lambda v, g=attrgetter(names[0]): (g(v),)) if names else (lambda v: ()))
        known = _FIELDS[kind] = (names, getter)
    if known is not None:
        names, getter = known
        leaves = _LEAVES
        return {n: v if type(v) in leaves else plain(v)
                for n, v in zip(names, getter(value), strict=True)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


@dataclass(frozen=True)
class SharedNormalisation:
    """One message's OBX normalised once, for every transformer of every route that needs it
    (normalise_lab, oru_events, crbio): read-only.

    `message` is the reading it came from and `index` maps each of its OBX segments
    (`id(segment)`) to its position in `raw`, so oru_events can take its OBR groups' results
    out of it without normalising them again.
    """

    text: str
    mappings: MappingSet
    message: Message | None
    sender: str
    raw: list[RawObservation]
    result: NormalisationResult
    observations: list[dict[str, Any]]  # plain(result.observations)
    data: dict[str, Any]  # what normalise_exchange returns
    index: dict[int, int]


_SHARED_KEY = "lab.normalisation"


def _message_of(exchange: Exchange) -> Message | None:
    """The router's reading of the message when `exchange.text` is still the text it read."""
    parsed = exchange.shared.get("parsed")
    if parsed is not None and (parsed[0] is exchange.text or parsed[0] == exchange.text):
        return parsed[1]  # type: ignore[no-any-return]
    return None


def shared_normalisation(exchange: Exchange) -> SharedNormalisation:
    """The normalisation of `exchange.text`, computed once per message and text.

    Kept in `exchange.shared` (one dict per message, across its routes) under the text and
    the mapping set it was computed with: a chain that changed the text, or a mapping
    accepted meanwhile, gets a fresh one. Raises Er7Error when the text cannot be read.
    """
    ctx = _context
    mappings = ctx.mappings
    cached: SharedNormalisation | None = exchange.shared.get(_SHARED_KEY)
    if (cached is not None and cached.mappings is mappings
            and (cached.text is exchange.text or cached.text == exchange.text)):
        return cached
    message = _message_of(exchange)
    if message is not None:
        sender, raw_obs = observations_from_message(message)
        obx = message.segments_named("OBX")
    else:
        charset = exchange.message.charset if exchange.message is not None else (
            exchange.headers.get("charset") or "utf-8")
        sender, raw_obs = observations_from_oru(exchange.text, charset)
        obx = []
    result = normalise_observations(raw_obs, sender=sender, catalogue=ctx.catalogue,
                                    mappings=mappings)
    observations = [plain(o) for o in result.observations]
    counts: dict[str, int] = {}
    for o in result.observations:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    data = {"sender": sender, "observations": observations,
            "backlog": [plain(b) for b in result.backlog], "counts": counts}
    shared = SharedNormalisation(
        text=exchange.text, mappings=mappings, message=message, sender=sender, raw=raw_obs,
        result=result, observations=observations, data=data,
        index={id(seg): i for i, seg in enumerate(obx)})
    exchange.shared[_SHARED_KEY] = shared
    return shared


def normalise_exchange(exchange: Exchange) -> dict[str, Any]:
    """Normalised observations of an ORU, as plain JSON-ready data (also used by oru events
    and CR-BIO). Shared between the routes of one message: read it, do not change it."""
    return shared_normalisation(exchange).data


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
    exchange.headers["mapping_backlog"] = list(data["backlog"])
    exchange.headers["normalisation_counts"] = dict(data["counts"])
    exchange.body = {
        "message_id": exchange.message_id,
        "control_id": exchange.headers.get("control_id"),
        "sender": data["sender"],
        "patient_key": exchange.headers.get("patient_key"),
        "observations": list(data["observations"]),
    }
    exchange.content_type = "application/json"
    return exchange
