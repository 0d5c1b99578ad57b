"""Resources built and checked with the `fhirclient` models (FHIR 4.0.1).

`checked` runs a resource through the model class of its type, strictly (unknown elements,
wrong types and missing required elements raise) and writes it back, so a mapping that
drifts from R4 fails instead of reaching an EHR. The tests check every resource type this
way. When serving, `finish` checks what `CHECK` says for the request: every resource of a
read, and the resources of a search page only with `PARCOURS_FHIR_CHECK=all`, because the
model round trip costs milliseconds a resource and a page holds up to a thousand
(docs/benchmarks.md, "FHIR Observation search"); a page is built by the same mapping code
the reads and the tests check. The choice of library: docs/architecture.md ("Where we wrote
code ourselves").
"""

from __future__ import annotations

import hashlib
import json
import os
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from fhirclient.models.fhirabstractbase import FHIRValidationError
from fhirclient.models.fhirelementfactory import FHIRElementFactory

FHIR_VERSION = "4.0.1"
# Whether `finish` runs the model check in this request (set by the router per request).
CHECK: ContextVar[bool] = ContextVar("fhir_model_check", default=True)


def check_searches() -> bool:
    """PARCOURS_FHIR_CHECK: `reads` (default) checks reads only, `all` search pages too."""
    return os.environ.get("PARCOURS_FHIR_CHECK", "reads").strip().lower() == "all"


class InvalidResource(ValueError):
    """A resource does not conform to its FHIR R4 type (`kind`: its resourceType, the only
    part fit for a log line: the message may quote patient data)."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


def checked(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as the R4 model class of its `resourceType` serialises it."""
    kind = resource.get("resourceType")
    if not isinstance(kind, str):
        raise InvalidResource("resourceType missing", "?")
    try:
        model = FHIRElementFactory.instantiate(kind, resource)
        if type(model).__name__ != kind:
            raise InvalidResource(f"{kind} is not an R4 resource type", kind)
        out = model.as_json()
    except FHIRValidationError as exc:
        raise InvalidResource(f"{kind}: {exc}", kind) from exc
    return out


def instant(value: datetime | None) -> str | None:
    """An R4 instant/dateTime: timezone required, naive values are UTC (the store's)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def version_of(resource: dict[str, Any]) -> str:
    """meta.versionId: a digest of the resource's content. The store keeps no history
    (no vread), so the version is what changes exactly when the content does."""
    body = {k: v for k, v in resource.items() if k != "meta"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def finish(resource: dict[str, Any], last_updated: datetime | None,
           profiles: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """meta (versionId, lastUpdated, profile) added, then checked against the R4 model."""
    out = checked(resource) if CHECK.get() else resource
    meta: dict[str, Any] = {"versionId": version_of(out)}
    if last_updated is not None:
        meta["lastUpdated"] = instant(last_updated)
    if profiles:
        meta["profile"] = list(profiles)
    out["meta"] = meta
    return out
