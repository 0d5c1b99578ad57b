"""Sign in and out. The token is verified by the timeline's auth (issue #5), once.

Why the browser gets a session cookie instead of keeping the bearer token: a token in page
script could be read by any script that ever ran in the page; an HttpOnly cookie cannot. The
token itself is never stored, logged or put in a URL.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from engine.ui import auth_adapter
from engine.ui.session import COOKIE, LOGIN_COOKIE, SESSION_SECONDS
from engine.ui.web import UI, redirect, remote_of

log = logging.getLogger("parcours.ui")


def _safe_next(value: str | None) -> str:
    """Only a path of this UI: never an absolute URL (open redirect)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/"


def build_router(ui: UI) -> APIRouter:
    router = APIRouter()

    def login_form(request: Request, *, error: str = "", username: str = "",
                   status: int = 200) -> Response:
        cookie, form_nonce = ui.signer.login_nonce()
        resp = ui.render(request, "login.html", {
            "error": error, "username": username, "nonce": form_nonce,
            "next": _safe_next(request.query_params.get("next"))}, status=status)
        resp.set_cookie(LOGIN_COOKIE, cookie, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/ui/login", max_age=3600)
        return resp

    @router.get("/ui/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> Response:
        return login_form(request)

    @router.post("/ui/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        data = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        if not ui.signer.check_login_nonce(request.cookies.get(LOGIN_COOKIE), data.get("nonce")):
            return login_form(request, error="The sign-in form expired: try again.",
                              status=400)
        username = data.get("username", "").strip()
        token = data.get("token", "").strip()
        principal = await asyncio.to_thread(auth_adapter.authenticate, ui.engine, username,
                                            token, remote_of(request))
        if principal is None:
            log.info("UI sign-in refused", extra={"remote": remote_of(request)})
            return login_form(request, error="Unknown user or token.", username=username,
                              status=401)
        value, session = ui.signer.dump(principal.user_id, principal.username, principal.role,
                                        principal.professional_id, principal.via)
        target = _safe_next(data.get("next"))
        if target == "/ui/":
            target = "/ui/dashboard" if session.is_operator else "/ui/patients"
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(COOKIE, value, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https", max_age=SESSION_SECONDS)
        resp.delete_cookie(LOGIN_COOKIE, path="/ui/login")
        log.info("UI sign-in", extra={"user": principal.username, "role": principal.role})
        return resp

    @router.post("/ui/logout")
    async def logout(request: Request) -> Response:
        s = ui.session(request)
        if s is not None:
            await ui.form_with_csrf(request, s)
        resp = redirect("/ui/login")
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @router.get("/ui/")
    async def home(request: Request) -> Response:
        s = ui.require(request)
        return redirect("/ui/dashboard" if s.is_operator else "/ui/patients")

    @router.get("/")
    async def root() -> Response:
        return redirect("/ui/")

    return router
