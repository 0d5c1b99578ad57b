"""The FHIR R4 API (issue #13): the coordination timeline under `/fhir/r4` for EHRs.

`include_api(app, engine)` is the one call engine/api/http.py makes. Resource types are
providers in a `Registry` (registry.py; docs/fhir.md "Adding a resource type"); the
engine's registry is `engine.fhir_registry`, built on first use, so another package can
register its providers on it before the HTTP app is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.fhir.registry import Provider, Registry, SearchParam, SearchResult, default_registry

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["Provider", "Registry", "SearchParam", "SearchResult", "include_api",
           "registry_of"]


def registry_of(engine: Any) -> Registry:
    registry = getattr(engine, "fhir_registry", None)
    if registry is None:
        registry = default_registry()
        from engine.fhir.dmp import (  # _source=dmp (docs/dmp.md)
            connection_from,
            register_consultation,
        )

        register_consultation(registry, lambda: connection_from(getattr(engine, "config", None)))
        engine.fhir_registry = registry
    return registry


def include_api(app: FastAPI, engine: Any) -> None:
    """Mount /fhir/r4 when the timeline is installed (it holds what FHIR serves)."""
    timeline = getattr(engine, "timeline", None)
    if timeline is None:
        return
    from engine.fhir.router import build_router

    app.include_router(build_router(timeline, registry_of(engine)))
