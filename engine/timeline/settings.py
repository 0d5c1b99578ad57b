"""Timeline settings: environment variables with safe defaults (the operator never needs the
source). The redundancy window can also be set per destination in routes.yaml
(`options: {redundancy_window_days: 7}`)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class TimelineSettings:
    # Same test, same patient, another prescriber within this many days: "possibly redundant".
    redundancy_window_days: float = 7.0
    # A doctor named in PV1-7/8/9/17 stays in the patient's care circle this many days after
    # the last ADT message naming them.
    care_circle_days: float = 90.0
    # OIDC (Pro Santé Connect or any OpenID provider): JWKS URL or local file, issuer, audience.
    oidc_jwks: str | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    # Claim holding the professional id (PSC: SubjectNameID = RPPS), matched to users.
    oidc_id_claim: str = "SubjectNameID"
    # Role given to a valid OIDC user with no users row; empty = such users are refused.
    oidc_default_role: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> TimelineSettings:
        e = os.environ if env is None else env
        return cls(
            redundancy_window_days=float(e.get("PARCOURS_REDUNDANCY_WINDOW_DAYS", "7")),
            care_circle_days=float(e.get("PARCOURS_CARE_CIRCLE_DAYS", "90")),
            oidc_jwks=e.get("PARCOURS_OIDC_JWKS") or None,
            oidc_issuer=e.get("PARCOURS_OIDC_ISSUER") or None,
            oidc_audience=e.get("PARCOURS_OIDC_AUDIENCE") or None,
            oidc_id_claim=e.get("PARCOURS_OIDC_ID_CLAIM", "SubjectNameID"),
            oidc_default_role=e.get("PARCOURS_OIDC_DEFAULT_ROLE") or None,
        )
