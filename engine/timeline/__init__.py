"""The coordination timeline (issue #5): patients, identities, events, care circle, audit.

`install(engine)` is the one call the engine makes: it creates the `Timeline` service on
the engine's store, registers the `timeline` destination type for routes.yaml, and gives
the HTTP app its /api/v1 router (`engine.timeline_router`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.timeline.service import Denied, Timeline
from engine.timeline.settings import TimelineSettings

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI

    from engine.api.port import EngineView

__all__ = ["Denied", "Timeline", "TimelineSettings", "include_api", "install"]


def install(engine: EngineView) -> Timeline:
    from channels.outbound import factory
    from engine.timeline.destination import TimelineDestination

    lab = getattr(engine, "lab", None)

    def dmp_destinations() -> set[str]:
        config = getattr(engine, "config", None)
        if config is None:
            return set()
        return {name for name, cfg in config.destinations.items() if cfg.get("type") == "dmp"}

    timeline = Timeline(engine.store.engine, TimelineSettings.from_env(),
                        catalogue=(lambda: lab.catalogue) if lab is not None else None,
                        dmp_destinations=dmp_destinations)
    engine.timeline = timeline  # type: ignore[attr-defined]
    factory._register_builtin()  # registering first must not hide the built-in types
    factory.register("timeline", lambda name, cfg: TimelineDestination(name, cfg, timeline))
    return timeline


def router_for(engine: Any) -> APIRouter | None:
    timeline = getattr(engine, "timeline", None)
    if timeline is None:
        return None
    from engine.timeline.api import build_router

    return build_router(timeline)


def include_api(app: FastAPI, engine: Any) -> None:
    """Called by engine/api/http.py's create_app: the /api/v1 routes when installed."""
    router = router_for(engine)
    if router is not None:
        app.include_router(router)
        from engine.timeline.audit import AuditedRequests

        # Outermost, so a failure anywhere below (a handler, the UI, a serialiser) is seen.
        app.add_middleware(AuditedRequests, db=engine.timeline.db)
