"""SMART App Launch discovery (`.well-known/smart-configuration`, SMART App Launch 2.x
§2.0.7 "Conformance"), served only when OIDC is configured: the issuer's endpoints are
those of the identity provider (Pro Santé Connect), this server only verifies its JWTs.
"""

from __future__ import annotations

import os
from typing import Any

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def _endpoints(issuer: str) -> tuple[str, str]:
    """Authorization and token endpoints: PARCOURS_OIDC_AUTHORIZE_URL / _TOKEN_URL, else the
    OpenID Connect defaults under the issuer (Keycloak's layout, which PSC uses)."""
    base = issuer.rstrip("/")
    return (os.environ.get("PARCOURS_OIDC_AUTHORIZE_URL") or f"{base}/protocol/openid-connect/auth",
            os.environ.get("PARCOURS_OIDC_TOKEN_URL") or f"{base}/protocol/openid-connect/token")


def smart_configuration(settings: Any) -> dict[str, Any] | None:
    if not settings.oidc_jwks or not settings.oidc_issuer:
        return None
    authorize, token = _endpoints(settings.oidc_issuer)
    out: dict[str, Any] = {
        "issuer": settings.oidc_issuer,
        "authorization_endpoint": authorize,
        "token_endpoint": token,
        "grant_types_supported": ["authorization_code"],
        "scopes_supported": ["openid", "fhirUser", "user/*.read"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": ["launch-standalone", "client-public", "client-confidential-symmetric",
                         "context-standalone-patient", "permission-user", "sso-openid-connect"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
    }
    if settings.oidc_jwks.startswith(("https://", "http://")):
        out["jwks_uri"] = settings.oidc_jwks
    return out


def oauth_uris_extension(settings: Any) -> dict[str, Any]:
    authorize, token = _endpoints(settings.oidc_issuer)
    return {"url": OAUTH_URIS, "extension": [
        {"url": "authorize", "valueUri": authorize}, {"url": "token", "valueUri": token}]}
