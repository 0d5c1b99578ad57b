"""HTTP API (FastAPI).

Only what carries no patient data is served before authentication exists (issue #5):
health and channel counters. Message reads come with the care-circle auth and audit.
"""

from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from engine.api.port import EngineView


def create_app(engine: EngineView) -> FastAPI:
    # /docs and /redoc load Swagger UI and ReDoc from the installed package, not a CDN: an
    # engine inside a hospital network usually has no way out to the internet.
    app = FastAPIOffline(title="Parcours", version="0.1.0")

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 when the store answers and every channel listens; 503 otherwise."""
        h = engine.health()
        return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)

    @app.get("/api/channels")
    def channels() -> dict[str, Any]:
        return engine.channel_snapshot()

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus exposition format (text 0.0.4)."""
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def require_operator(request: Request) -> None:
        """Until the operator login of issue #6: a bearer token (PARCOURS_ADMIN_TOKEN), or,
        without one configured, only callers on this machine."""
        token = os.environ.get("PARCOURS_ADMIN_TOKEN")
        if token:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given, token):
                raise HTTPException(401, "operator token required")
        elif request.client is None or request.client.host not in ("127.0.0.1", "::1"):
            raise HTTPException(403, "set PARCOURS_ADMIN_TOKEN to allow remote operators")

    @app.post("/api/routes/reload")
    async def reload_routes(request: Request) -> JSONResponse:
        """Reload routes.yaml; a bad file keeps the running routes and answers 422."""
        require_operator(request)
        result = await engine.reload()
        return JSONResponse(result, status_code=200 if result["ok"] else 422)

    @app.get("/api/routes")
    def routes(request: Request) -> dict[str, Any]:
        require_operator(request)
        return {"file": str(engine.settings.routes_file), "text": engine.config.text,
                "last_reload": engine.last_reload,
                "routes": [r.name for r in engine.config.routes],
                "destinations": sorted(engine.config.destinations)}

    from engine.ui import install as install_ui  # operator and clinician pages (issue #6)

    install_ui(app, engine)
    from engine.timeline import include_api  # /api/v1: patients, timeline, series, documents

    include_api(app, engine)
    from engine.fhir import include_api as include_fhir  # /fhir/r4 (issue #13, docs/fhir.md)

    include_fhir(app, engine)
    return app
