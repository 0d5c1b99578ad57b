"""Who is calling: opaque bearer tokens (stored hashed) and OIDC JWTs (Pro Santé Connect).

Opaque tokens are 256-bit random strings shown once by `parcours users add`; only their
SHA-256 is stored (a token with that much entropy needs no slow hash), so a leaked database
does not leak credentials. A JWT is verified against the configured JWKS (signature,
expiry, issuer, audience; RS/ES/PS algorithms only — never "none" or HMAC with a public key)
and mapped to a registered user by `sub`/username or by the professional id claim.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from engine.timeline.models import api_tokens, users
from engine.timeline.settings import TimelineSettings

ROLES = ("admin", "operator", "clinician")
JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "PS384", "PS512"]
TOKEN_PREFIX = "pct_"


@dataclass(frozen=True)
class Principal:
    user_id: int | None
    username: str
    role: str
    professional_id: str | None
    via: str  # token or oidc


@dataclass(frozen=True)
class Refusal:
    """Why a credential was refused, for the audit log: who it claimed to be (a token's
    user, a JWT's unverified `sub`), never the credential itself."""

    claimed: str
    reason: str  # unknown_token, revoked, expired, inactive_user, forged, alg_not_allowed,
    #              expired_jwt, malformed, unknown_user, oidc_not_configured, wrong_user
    via: str  # token or oidc


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_user(db: Engine, username: str, role: str, professional_id: str | None = None
             ) -> tuple[int, str]:
    """Create a user and a first token; returns (user id, token). The token is not stored."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    now = datetime.now(UTC)
    with db.begin() as conn:
        uid = int(conn.execute(insert(users).values(
            username=username, role=role, professional_id=professional_id, active=True,
            created_at=now).returning(users.c.id)).scalar_one())
    return uid, new_token(db, uid)


def new_token(db: Engine, user_id: int, expires_at: datetime | None = None) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.begin() as conn:
        conn.execute(insert(api_tokens).values(
            user_id=user_id, token_hash=hash_token(token), created_at=datetime.now(UTC),
            expires_at=expires_at))
    return token


def set_active(db: Engine, username: str, active: bool) -> bool:
    with db.begin() as conn:
        return conn.execute(update(users).where(users.c.username == username)
                            .values(active=active)).rowcount > 0


def revoke_tokens(db: Engine, username: str) -> int:
    with db.begin() as conn:
        uid = conn.execute(select(users.c.id).where(users.c.username == username)).scalar()
        if uid is None:
            return 0
        return conn.execute(update(api_tokens).where(
            api_tokens.c.user_id == uid, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))).rowcount


class Authenticator:
    def __init__(self, db: Engine, settings: TimelineSettings) -> None:
        self.db = db
        self.settings = settings
        self._jwk_client: Any = None

    def authenticate(self, credential: str) -> Principal | None:
        found = self.identify(credential)
        return found if isinstance(found, Principal) else None

    def identify(self, credential: str) -> Principal | Refusal:
        """The caller, or why the credential is refused (for the audit of failed logins)."""
        if not credential:
            return Refusal("anonymous", "no_credentials", "token")
        if credential.count(".") == 2 and not credential.startswith(TOKEN_PREFIX):
            return self._oidc(credential)
        return self._opaque(credential)

    def _opaque(self, token: str) -> Principal | Refusal:
        now = datetime.now(UTC)
        with self.db.connect() as conn:
            row = conn.execute(
                select(users, api_tokens.c.expires_at, api_tokens.c.revoked_at)
                .join(api_tokens, api_tokens.c.user_id == users.c.id)
                .where(api_tokens.c.token_hash == hash_token(token))).mappings().first()
        if row is None:
            return Refusal("unknown", "unknown_token", "token")
        if row["revoked_at"] is not None:
            return Refusal(row["username"], "revoked", "token")
        if not row["active"]:
            return Refusal(row["username"], "inactive_user", "token")
        exp = row["expires_at"]
        if exp is not None and (exp if exp.tzinfo else exp.replace(tzinfo=UTC)) <= now:
            return Refusal(row["username"], "expired", "token")
        return Principal(row["id"], row["username"], row["role"], row["professional_id"],
                         "token")

    def _signing_key(self, token: str) -> Any:
        import jwt

        source = self.settings.oidc_jwks
        if source is None:
            raise jwt.InvalidTokenError("OIDC is not configured (PARCOURS_OIDC_JWKS)")
        if source.startswith(("https://", "http://")):
            if self._jwk_client is None:
                self._jwk_client = jwt.PyJWKClient(source, cache_keys=True)
            return self._jwk_client.get_signing_key_from_jwt(token).key
        keys = jwt.PyJWKSet.from_dict(json.loads(Path(source).read_text(encoding="utf-8")))
        kid = jwt.get_unverified_header(token).get("kid")
        for k in keys.keys:
            if kid is None or k.key_id == kid:
                return k.key
        raise jwt.InvalidTokenError("no JWKS key matches the token's kid")

    def _oidc(self, token: str) -> Principal | Refusal:
        import jwt

        claimed = _claimed_subject(token)
        try:
            alg = str(jwt.get_unverified_header(token).get("alg", ""))
        except (jwt.PyJWTError, ValueError):
            return Refusal(claimed, "malformed", "oidc")
        if alg not in JWT_ALGORITHMS:  # "none", HS256 with a public key, …
            return Refusal(claimed, "alg_not_allowed", "oidc")
        if self.settings.oidc_jwks is None:
            return Refusal(claimed, "oidc_not_configured", "oidc")
        try:
            claims = jwt.decode(
                token, self._signing_key(token), algorithms=JWT_ALGORITHMS,
                audience=self.settings.oidc_audience, issuer=self.settings.oidc_issuer,
                options={"require": ["exp", "sub"],
                         "verify_aud": self.settings.oidc_audience is not None})
        except jwt.ExpiredSignatureError:
            return Refusal(claimed, "expired_jwt", "oidc")
        except jwt.InvalidSignatureError:
            return Refusal(claimed, "forged", "oidc")
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            return Refusal(claimed, "wrong_audience_or_issuer", "oidc")
        except (jwt.PyJWTError, OSError, ValueError):
            return Refusal(claimed, "malformed", "oidc")
        sub = str(claims["sub"])
        prof = claims.get(self.settings.oidc_id_claim)
        prof = str(prof) if prof else None
        with self.db.connect() as conn:
            cond = users.c.username == sub
            if prof:
                cond = cond | (users.c.professional_id == prof)
            row = conn.execute(select(users).where(cond).order_by(users.c.id)).mappings().first()
        if row is not None:
            if not row["active"]:
                return Refusal(sub, "inactive_user", "oidc")
            return Principal(row["id"], row["username"], row["role"],
                             row["professional_id"] or prof, "oidc")
        if self.settings.oidc_default_role in ROLES:
            return Principal(None, sub, self.settings.oidc_default_role, prof, "oidc")
        return Refusal(sub, "unknown_user", "oidc")


def _claimed_subject(token: str) -> str:
    """The `sub` a JWT claims, read without verifying it (it is what the caller said, which
    the audit records beside the reason it was refused); bounded, never the token."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError):
        return "unreadable"
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return str(sub)[:100] if sub else "no sub"
