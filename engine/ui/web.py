"""What every UI page shares: templates, the session, role checks, CSRF and headers.

Pages are plain server-rendered HTML (Jinja2 with autoescape on for every template), so
whatever a message or a user typed is shown as text, never interpreted. The few scripts are
static files under /ui/static; the Content-Security-Policy (default-src 'self') forbids inline
scripts and inline event handlers, so an injection that slipped past escaping still could not
run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from engine.ui.session import COOKIE, Session, SessionSigner

if TYPE_CHECKING:
    from engine.api.port import EngineView

UI_DIR = Path(__file__).resolve().parent.parent.parent / "monitoring" / "ui"
TEMPLATES = UI_DIR / "templates"
STATIC = UI_DIR / "static"

CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class LoginRequired(Exception):
    """No valid session: the handler redirects to the login page (or 401 for JSON)."""


class Forbidden(Exception):
    """A valid session without the right: role, care circle, or CSRF token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _fmt_time(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _hd(value: Any) -> str:
    """An HD field (MSH-3/MSH-4: namespace id ^ universal id ^ universal id type, HL7 v2.5.1
    §2.A.33) as a person reads it: the namespace when there is one, else the universal id
    with its type (an OID alone, `^1.2.250…^ISO`, is common in France)."""
    text = str(value or "")
    namespace, _, rest = text.partition("^")
    universal, _, kind = rest.partition("^")
    if namespace:
        return namespace
    if universal:
        return f"{universal} ({kind})" if kind and kind != "ISO" else universal
    return text


def _fmt_age(seconds: Any) -> str:
    s = float(seconds or 0)
    if s <= 0:
        return "—"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _status_class(status: Any) -> str:
    s = str(status or "").lower()
    if s in ("done", "delivered", "listening", "polling", "ok", "routed", "accepted", "aa",
             "ca", "mapped", "sent", "valid"):
        return "ok"
    if s in ("retry", "pending", "backlog", "duplicate", "unrouted", "not-required", "open"):
        return "warn"
    if s in ("failed", "dead", "error", "rejected", "ae", "ar", "ce", "cr", "down",
             "dead letters", "stopped", "undeliverable", "invalid"):
        return "bad"
    return "idle"


def make_templates() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["time"] = _fmt_time
    env.filters["age"] = _fmt_age
    env.filters["status_class"] = _status_class
    env.filters["hd"] = _hd
    env.filters["urlq"] = lambda v: quote(str(v or ""), safe="")
    return env


class UI:
    """Per-app state: the engine, the templates and the session signer."""

    def __init__(self, engine: EngineView, signer: SessionSigner | None = None) -> None:
        self.engine = engine
        self.templates = make_templates()
        self.signer = signer or SessionSigner()

    # -- sessions -------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        return self.signer.load(request.cookies.get(COOKIE))

    def require(self, request: Request, *roles: str) -> Session:
        """The session, if its role is one of `roles` (any role when none given)."""
        s = self.session(request)
        if s is None:
            raise LoginRequired()
        from engine.ui import auth_adapter

        if not auth_adapter.still_valid(self.engine, s):
            raise LoginRequired()
        if roles and s.role not in roles:
            raise Forbidden(f"this page needs the role {' or '.join(roles)}; "
                            f"you are signed in as {s.role}")
        return s

    def operator(self, request: Request) -> Session:
        return self.require(request, "operator", "admin")

    async def form_with_csrf(self, request: Request, session: Session) -> dict[str, str]:
        """The posted form, once its CSRF token matched the session (else Forbidden)."""
        form = await request.form()
        data = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        if not self.signer.check_csrf(session, data.get("csrf")):
            raise Forbidden("the form's security token is missing or stale: reload the page "
                            "and try again")
        return data

    # -- rendering ------------------------------------------------------------------------

    def render(self, request: Request, name: str, context: dict[str, Any],
               status: int = 200, session: Session | None = None) -> HTMLResponse:
        s = session or self.session(request)
        ctx = {"request": request, "session": s, "path": request.url.path,
               "csrf": self.signer.csrf_token(s) if s else "",
               "now": datetime.now(UTC), **context}
        html = self.templates.get_template(name).render(ctx)
        return HTMLResponse(html, status_code=status)


def remote_of(request: Request) -> str:
    return request.client.host if request.client else "?"


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def apply_security_headers(response: Response, *, private: bool = True) -> None:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    if private:
        # Pages may carry patient data: never keep them in a shared or browser cache.
        response.headers["Cache-Control"] = "no-store"
