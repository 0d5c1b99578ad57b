"""`POST /fhir/r4` with a transaction Bundle: every entry or none (FHIR R4 http.html
§3.1.0.11 "Transaction").

Entries run through the providers' create / update / patch handlers on the one database
transaction the router opened, so a failing entry rolls every earlier one back. Processing
order is the standard's (§3.1.0.11.2): DELETE, POST, PUT/PATCH, then GET; a `urn:uuid:`
fullUrl of a created entry is replaced by its new `Type/id` in every later entry's
references. GET entries read through the providers (care circle and masking apply).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from engine.fhir.context import Context
from engine.fhir.outcome import FhirError
from engine.fhir.registry import Registry

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3}


def _replace_refs(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: _replace_refs(v, ids) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref.startswith("urn:uuid:"):
            if ref not in ids:
                raise FhirError(400, f"reference {ref} names no entry of the transaction")
            out["reference"] = ids[ref]
        return out
    if isinstance(value, list):
        return [_replace_refs(v, ids) for v in value]
    return value


def _target(url: str) -> tuple[str, str | None, list[tuple[str, str]]]:
    parts = urlsplit(url)
    path = parts.path.strip("/").split("/")
    if not path or not path[0] or len(path) > 2:
        raise FhirError(400, f"entry request url {url!r} is not Type or Type/id")
    return path[0], (path[1] if len(path) == 2 else None), parse_qsl(parts.query)


def run_bundle(ctx: Context, registry: Registry, bundle: Any) -> dict[str, Any]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError(400, "the body must be a Bundle")
    if bundle.get("type") != "transaction":
        raise FhirError(422, "only Bundle.type transaction is processed at the base URL",
                        code="not-supported")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(400, "Bundle.entry must be a list")
    plan = []
    for i, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or request.get("method") not in ORDER:
            raise FhirError(400, f"entry {i}: request.method must be one of "
                            f"{', '.join(ORDER)}", expression=f"Bundle.entry[{i}].request")
        plan.append((ORDER[request["method"]], i, entry))
    plan.sort(key=lambda t: (t[0], t[1]))
    ids: dict[str, str] = {}
    responses: dict[int, dict[str, Any]] = {}
    for _, i, entry in plan:
        method = entry["request"]["method"]
        rtype, rid, params = _target(str(entry["request"].get("url", "")))
        resource = _replace_refs(entry.get("resource"), ids)
        try:
            responses[i] = _one(ctx, registry, method, rtype, rid, params, resource,
                                entry["request"].get("ifMatch"))
        except FhirError as exc:
            exc.diagnostics = f"entry {i}: {exc.diagnostics}"
            raise
        full = entry.get("fullUrl")
        created = responses[i].get("_created")
        if isinstance(full, str) and created:
            ids[full] = created
    out = []
    for i in range(len(entries)):
        r = dict(responses[i])
        r.pop("_created", None)
        out.append(r)
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": out}


def _one(ctx: Context, registry: Registry, method: str, rtype: str, rid: str | None,
         params: list[tuple[str, str]], resource: Any, if_match: str | None
         ) -> dict[str, Any]:
    if not registry.providers(rtype):
        raise FhirError(404, f"resource type {rtype} is not supported", code="not-supported")
    if method == "POST":
        provider = next((p for p in registry.providers(rtype) if p.create), None)
        if provider is None or provider.create is None or rid is not None:
            raise FhirError(405, f"create of {rtype} is not supported")
        if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
            raise FhirError(400, f"the entry's resource must be a {rtype}")
        stored = provider.create(ctx, resource)
        return _response("201 Created", stored, created=f"{rtype}/{stored['id']}")
    if rid is None:
        raise FhirError(400, f"{method} needs Type/id")
    provider = registry.for_id(rtype, rid)
    if method == "PUT":
        if provider is None or provider.update is None:
            raise FhirError(405, f"update of {rtype} is not supported")
        if not isinstance(resource, dict) or resource.get("id") != rid:
            raise FhirError(400, "the entry's resource id must be the id in its url")
        stored, created = provider.update(ctx, rid, resource, if_match)
        return _response("201 Created" if created else "200 OK", stored)
    if method == "PATCH":
        if provider is None or provider.patch is None:
            raise FhirError(405, f"patch of {rtype} is not supported")
        # a FHIRPath Patch `Parameters` resource (http.html §3.1.0.11.5)
        stored = provider.patch(ctx, rid, resource, "application/fhir+json", if_match)
        return _response("200 OK", stored)
    if method == "GET":
        if provider is None or provider.read is None:
            raise FhirError(404, f"{rtype}/{rid} not found")
        return _response("200 OK", provider.read(ctx, rid))
    raise FhirError(405, f"{method} entries are not supported")


def _response(status: str, resource: dict[str, Any], created: str | None = None
              ) -> dict[str, Any]:
    version = (resource.get("meta") or {}).get("versionId")
    response: dict[str, Any] = {"status": status,
                                "location": f"{resource['resourceType']}/{resource['id']}"}
    if version:
        response["etag"] = f'W/"{version}"'
    out: dict[str, Any] = {"resource": resource, "response": response}
    if created:
        out["_created"] = created
    return out
