"""HTTP API (FastAPI).

Only what carries no patient data is served before authentication exists (issue #5):
health and channel counters. Message reads come with the care-circle auth and audit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from .app import Engine


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="Parcours", version="0.1.0")

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 when the store answers and every channel listens; 503 otherwise."""
        h = engine.health()
        return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)

    @app.get("/api/channels")
    def channels() -> dict[str, Any]:
        out = {}
        for name, rt in engine.channels.items():
            s = engine.intake.stats_for(name)
            out[name] = {"type": rt.state.type, "state": rt.state.state,
                         "detail": rt.state.detail, "received": s.received, "bytes": s.bytes,
                         "acks": s.acks, "duplicates": s.duplicates,
                         "parse_errors": s.parse_errors, "store_errors": s.store_errors}
        return out

    return app
