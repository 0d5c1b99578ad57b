"""Resources built and checked with the `fhirclient` models (FHIR 4.0.1).

Every resource the API answers goes through `checked`: the model class of its type parses
it strictly (unknown elements, wrong types and missing required elements raise) and writes
it back, so a mapping that drifts from R4 fails in its test instead of in an EHR. The choice
of library is explained in docs/architecture.md ("Where we wrote code ourselves").
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from fhirclient.models.fhirabstractbase import FHIRValidationError
from fhirclient.models.fhirelementfactory import FHIRElementFactory

FHIR_VERSION = "4.0.1"


class InvalidResource(ValueError):
    """A resource does not conform to its FHIR R4 type."""


def checked(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as the R4 model class of its `resourceType` serialises it."""
    kind = resource.get("resourceType")
    if not isinstance(kind, str):
        raise InvalidResource("resourceType missing")
    try:
        model = FHIRElementFactory.instantiate(kind, resource)
        if type(model).__name__ != kind:
            raise InvalidResource(f"{kind} is not an R4 resource type")
        out = model.as_json()
    except FHIRValidationError as exc:
        raise InvalidResource(f"{kind}: {exc}") from exc
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
    out = checked(resource)
    meta: dict[str, Any] = {"versionId": version_of(out)}
    if last_updated is not None:
        meta["lastUpdated"] = instant(last_updated)
    if profiles:
        meta["profile"] = list(profiles)
    out["meta"] = meta
    return out
