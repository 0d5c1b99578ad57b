"""`GET /fhir/r4/metadata`: the CapabilityStatement, built from the registry alone.

FHIR R4 capabilitystatement.html: kind `instance`, fhirVersion 4.0.1, JSON only, one
`rest.resource` per registered type with the union of its providers' interactions, search
parameters, `_include`s and profiles. A type or parameter appears here exactly when a
provider serves it, so a client never discovers something that answers 400.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine.fhir.model import FHIR_VERSION, checked
from engine.fhir.registry import Registry
from engine.fhir.smart import oauth_uris_extension, smart_configuration

SOFTWARE_VERSION = "0.1.0"


def capability_statement(registry: Registry, base: str, settings: Any) -> dict[str, Any]:
    resources = []
    writes = False
    for name in registry.types():
        providers = registry.providers(name)
        interactions = sorted({i for p in providers for i in p.interactions()})
        writes |= any(i in ("create", "update", "patch") for i in interactions)
        entry: dict[str, Any] = {"type": name,
                                 "interaction": [{"code": i} for i in interactions]}
        profiles = [pr for p in providers for pr in p.profiles]
        if profiles:
            entry["profile"] = profiles[0]
            if len(profiles) > 1:
                entry["supportedProfile"] = list(dict.fromkeys(profiles[1:]))
        params = registry.params(name)
        if registry.sources(name):
            entry["searchParam"] = [{"name": "_source", "type": "uri", "documentation":
                                     "alternative source: " + ", ".join(registry.sources(name))}]
        entry.setdefault("searchParam", []).extend(
            {"name": p.name, "type": p.type, **({"documentation": p.documentation}
                                                if p.documentation else {})}
            for p in sorted(params.values(), key=lambda p: p.name))
        if not entry["searchParam"]:
            del entry["searchParam"]
        includes = sorted({i for p in providers for i in p.includes})
        if includes:
            entry["searchInclude"] = includes
        if "update" in interactions:
            entry["updateCreate"] = False
        entry["versioning"] = "versioned"
        entry["readHistory"] = False
        resources.append(entry)
    security: dict[str, Any] = {
        "description": "Bearer tokens (opaque, from `parcours users`) or OIDC JWTs; "
                       "the care circle decides which patients a clinician reads."}
    if smart_configuration(settings) is not None:
        security["service"] = [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR"}]}]
        security["extension"] = [oauth_uris_extension(settings)]
    rest: dict[str, Any] = {"mode": "server", "security": security, "resource": resources}
    if writes:
        rest["interaction"] = [{"code": "transaction"}]
    return checked({
        "resourceType": "CapabilityStatement", "status": "active",
        "date": datetime.now(UTC).date().isoformat(), "kind": "instance",
        "publisher": "Parcours",
        "software": {"name": "Parcours", "version": SOFTWARE_VERSION},
        "implementation": {"description": "Parcours coordination timeline", "url": base},
        "fhirVersion": FHIR_VERSION, "format": ["json", "application/fhir+json"],
        "rest": [rest],
    })
