"""The operator and clinician web UI, served by the engine's HTTP API (issue #6).

`install(app, engine)` adds the pages, the static files and the handlers that turn "not signed
in" into the login page and "not allowed" into a 403 page. Pages live in one module per
audience (`operator.py`, `clinician.py`), templates and static files in `monitoring/ui/`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from engine.ui import clinician, login, operator
from engine.ui.web import STATIC, UI, Forbidden, LoginRequired, apply_security_headers

if TYPE_CHECKING:
    from engine.api.port import EngineView


def _wants_json(request: Request) -> bool:
    return "/api/" in request.url.path or request.url.path.endswith(".json")


def install(app: FastAPI, engine: EngineView) -> UI:
    ui = UI(engine)
    app.state.ui = ui
    app.include_router(login.build_router(ui))
    app.include_router(operator.build_router(ui))
    app.include_router(clinician.build_router(ui))
    referrals = getattr(engine, "referrals", None)
    if referrals is not None:  # the DAC worklist and request pages (issue #14)
        from engine.referrals.ui import build_router as referral_pages

        app.include_router(referral_pages(ui, referrals))
    app.mount("/ui/static", StaticFiles(directory=str(STATIC)), name="ui-static")

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        from urllib.parse import quote

        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        resp: Response = Response(status_code=303,
                                  headers={"Location": "/ui/login?next=" + quote(target)})
        if request.cookies.get("parcours_session"):
            resp.delete_cookie("parcours_session", path="/")  # expired or forged
        return resp

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": exc.reason}, status_code=403)
        return ui.render(request, "error.html", {"title": "Not allowed",
                                                 "message": exc.reason}, status=403)

    @app.middleware("http")
    async def headers(request: Request,
                      call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        path = request.url.path
        if path == "/" or path.startswith("/ui"):
            apply_security_headers(response, private=not path.startswith("/ui/static"))
        return response

    return ui
