"""The UI session: a signed cookie, and the CSRF token derived from it.

Why a signed cookie rather than a server-side session table: several engine processes serve
the UI behind one balancer (scaled deployment); a cookie signed with PARCOURS_SECRET_KEY is
valid on all of them with nothing shared but the key. Without the key a random one is drawn
per process: sessions then end with the process, which is the safe default for one machine.

The cookie carries who the user is and when the session ends, never a bearer token and never
patient data. It is HttpOnly (no script reads it), SameSite=Strict (no other site's page can
make the browser send it) and Secure when the request came over HTTPS.

CSRF: SameSite=Strict already stops cross-site posts in current browsers; the form token is
the second lock for older ones and for same-site subdomains. It is an HMAC of the session id,
so it needs no storage and changes with every login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

COOKIE = "parcours_session"
LOGIN_COOKIE = "parcours_login"  # login-form nonce: stops login CSRF (forced login)
SESSION_SECONDS = 8 * 3600  # a working day; the login asks for the token again after


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    user_id: str
    username: str
    role: str
    sid: str
    expires: float
    professional_id: str | None = None  # RPPS/ADELI: what the care circle is matched on
    via: str = "token"  # token or oidc

    @property
    def is_operator(self) -> bool:
        return self.role in ("operator", "admin")

    @property
    def is_clinician(self) -> bool:
        return self.role == "clinician"


class SessionSigner:
    def __init__(self, secret: bytes | None = None) -> None:
        key = secret or os.environ.get("PARCOURS_SECRET_KEY", "").encode() or None
        self.key = key or secrets.token_bytes(32)
        self.ephemeral = key is None

    def _mac(self, purpose: str, payload: bytes) -> str:
        return _b64(hmac.new(self.key, purpose.encode() + b"\0" + payload,
                             hashlib.sha256).digest())

    def dump(self, user_id: str, username: str, role: str, professional_id: str | None = None,
             via: str = "token", lifetime: float = SESSION_SECONDS) -> tuple[str, Session]:
        s = Session(str(user_id), username, role, secrets.token_urlsafe(16),
                    time.time() + lifetime, professional_id, via)
        payload = json.dumps({"u": s.user_id, "n": s.username, "r": s.role, "s": s.sid,
                              "e": int(s.expires), "p": s.professional_id, "v": s.via},
                             separators=(",", ":")).encode()
        return f"{_b64(payload)}.{self._mac('session', payload)}", s

    def load(self, cookie: str | None) -> Session | None:
        """The session of a cookie, or None when absent, forged, altered or expired."""
        if not cookie or "." not in cookie:
            return None
        body, mac = cookie.rsplit(".", 1)
        try:
            payload = _unb64(body)
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(mac, self._mac("session", payload)):
            return None
        try:
            data: dict[str, Any] = json.loads(payload)
            s = Session(str(data["u"]), str(data["n"]), str(data["r"]), str(data["s"]),
                        float(data["e"]), data.get("p"), str(data.get("v", "token")))
        except (ValueError, KeyError, TypeError):
            return None
        return s if s.expires > time.time() else None

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.sid.encode())

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(session))

    def login_nonce(self) -> tuple[str, str]:
        """(cookie value, form value) for the login form: the form must echo the cookie."""
        nonce = secrets.token_urlsafe(16)
        return nonce, self._mac("login", nonce.encode())

    def check_login_nonce(self, cookie: str | None, form: str | None) -> bool:
        if not cookie or not form:
            return False
        return hmac.compare_digest(form, self._mac("login", cookie.encode()))
