"""What the HTTP side (health, /api, /api/v1, /fhir/r4, the web pages) may use of the engine.

Why a port: the pages and APIs used to reach through `Engine` into its router, runner, bus and
leases, so any change to routing or delivery could break a page. They now depend on this
Protocol only; `Engine` implements it (tests/test_layout.py checks both), and the packages
mounted on the app (timeline, FHIR, referrals) attach their own services to the engine object
under the names listed at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from engine.config import Config
    from engine.delivery.runner import DeliveryStats
    from engine.routing.router import RouteResult
    from engine.settings import Settings
    from engine.store.database import Store
    from monitoring.metrics import Metrics
    from transformers.exchange import Exchange
    from transformers.hl7.ack import AckError
    from transformers.hl7.header import Header


@runtime_checkable
class EngineView(Protocol):
    store: Store
    config: Config
    settings: Settings
    metrics: Metrics
    last_reload: dict[str, Any] | None

    # -- reading -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]: ...
    def channel_snapshot(self) -> dict[str, dict[str, Any]]: ...
    def running_channels(self) -> set[str]: ...
    def queue_snapshot(self) -> dict[str, tuple[int, float]]: ...
    def destination_stats(self) -> dict[str, DeliveryStats]: ...
    def routing_facts(self) -> dict[str, Any]: ...
    def backlog_size(self) -> int: ...
    def evaluate_routes(self, exchange: Exchange) -> list[RouteResult]: ...

    # -- operator actions (each wakes the partitions it gave work to) ----------------------
    async def reload(self) -> dict[str, Any]: ...
    def replay(self, message_id: int) -> int: ...
    def retry(self, delivery_ids: Iterable[int], refused: dict[int, str]) -> None: ...
    def reload_mappings(self) -> Path: ...
    def notify_partition(self, partition: int) -> None: ...
    def notify_partition_from_thread(self, partition: int) -> None: ...
    def add_intake_check(self, message_type: str,
                         check: Callable[[str, Header], list[AckError]]) -> None: ...


#: Services the mounted packages attach to the engine object (read with getattr: a package
#: that is not installed leaves its name unset): `timeline` (engine/timeline, the timeline
#: service), `timeline_router` (its /api/v1 router), `fhir_registry` (engine/fhir),
#: `referrals` (engine/referrals).
ATTACHED = ("timeline", "timeline_router", "fhir_registry", "referrals")
