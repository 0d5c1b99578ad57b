"""The FHIR R4 HTTP face: `/fhir/r4` routes, authentication, errors, ETags, audit.

Composition only: the interactions (read, search, create, update, patch, transaction) are
dispatched to the providers of `registry.py`; what this module owns is HTTP (FHIR R4
http.html): bearer authentication exactly as /api/v1 (`Timeline.auth`), OperationOutcome
errors, `application/fhir+json`, `ETag`/`Last-Modified`/`If-None-Match`, and one audit row
per read or search (allowed or denied).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.fhir import model
from engine.fhir import search as searching
from engine.fhir.capability import capability_statement
from engine.fhir.context import Context
from engine.fhir.outcome import FhirError, outcome_of
from engine.fhir.registry import Registry
from engine.fhir.smart import smart_configuration
from engine.fhir.transaction import run_bundle

if TYPE_CHECKING:
    from engine.timeline import Timeline
    from engine.timeline.auth import Principal

log = logging.getLogger("parcours.fhir")
BASE = "/fhir/r4"
FHIR_JSON = "application/fhir+json"


def fhir_response(body: dict[str, Any], status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status_code=status,
                    media_type=FHIR_JSON, headers=headers)


def error_response(error: FhirError) -> Response:
    return fhir_response(outcome_of(error), error.status, error.headers)


def _remote(request: Request) -> str | None:
    return f"{request.client.host}:{request.client.port}" if request.client else None


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + BASE


def _etag_headers(resource: dict[str, Any]) -> dict[str, str]:
    meta = resource.get("meta") or {}
    headers = {}
    if meta.get("versionId"):
        headers["ETag"] = f'W/"{meta["versionId"]}"'
    if meta.get("lastUpdated"):
        headers["Last-Modified"] = format_datetime(
            datetime.fromisoformat(meta["lastUpdated"]), usegmt=True)
    return headers


def build_router(timeline: Timeline, registry: Registry) -> APIRouter:
    router = APIRouter(prefix=BASE, tags=["fhir"])

    def authenticate(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise FhirError(401, "bearer token required", code="login",
                            headers={"WWW-Authenticate": "Bearer"})
        who = timeline.auth.authenticate(credential.strip())
        if who is None:
            raise FhirError(401, "invalid, expired or revoked token", code="login",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return who

    def known_type(resource_type: str) -> None:
        if not registry.providers(resource_type):
            raise FhirError(404, f"resource type {resource_type} is not supported",
                            code="not-supported")

    async def answer(request: Request, work: Callable[[Context], Response],
                     write: bool = False, audit: Callable[[Context], tuple[str, dict[str, Any]]]
                     | None = None, check: bool = True) -> Response:
        """Authenticate, run `work` with a Context on a connection (a transaction for
        writes), audit, and turn a FhirError into an OperationOutcome."""
        base, remote = _base(request), _remote(request)

        def run() -> Response:
            model.CHECK.set(check)
            ctx = None
            try:
                who = authenticate(request)
                if who.role not in ("admin", "clinician"):
                    from engine.timeline import audit as audit_log

                    audit_log.record(timeline.db, who, "fhir", patient_ids=None,
                                     remote=remote, outcome="denied",
                                     detail={"path": request.url.path})
                    raise FhirError(403, "this role may not read patient data")
                opener = timeline.db.begin if write else timeline.db.connect
                with opener() as conn:
                    ctx = Context(timeline, registry, who, remote, base, conn)
                    response = work(ctx)
            except FhirError as exc:
                response = error_response(exc)
            except model.InvalidResource as exc:  # a mapping bug: never send what R4 refuses
                log.error("fhir resource failed its R4 model check: %s", exc.kind)
                response = error_response(FhirError(
                    500, "the server built a resource that is not valid FHIR R4",
                    code="exception"))
            if ctx is not None and audit is not None:
                action, detail = audit(ctx)
                ctx.audit(action, detail | ({"status": response.status_code}
                                            if response.status_code >= 400 else {}))
            return response

        return await asyncio.to_thread(run)

    @router.get("/metadata")
    async def metadata(request: Request) -> Response:
        """CapabilityStatement (FHIR R4 capabilitystatement.html): what is registered."""
        return fhir_response(capability_statement(registry, _base(request),
                                                  timeline.settings))

    @router.get("/.well-known/smart-configuration")
    async def smart(request: Request) -> Response:
        """SMART App Launch discovery, only when OIDC is configured."""
        config = smart_configuration(timeline.settings)
        if config is None:
            return error_response(FhirError(404, "OIDC is not configured on this server"))
        return Response(json.dumps(config), media_type="application/json")

    @router.post("")
    @router.post("/")
    async def bundle(request: Request) -> Response:
        """A transaction Bundle (FHIR R4 http.html §3.1.0.11): all or nothing."""
        body = await _json_body(request)

        def work(ctx: Context) -> Response:
            if isinstance(body, FhirError):
                raise body
            return fhir_response(run_bundle(ctx, registry, body))

        return await answer(request, work, write=True,
                            audit=lambda ctx: ("fhir.transaction", {}))

    @router.get("/{resource_type}")
    async def search_get(request: Request, resource_type: str) -> Response:
        return await _search(request, resource_type, list(request.query_params.multi_items()))

    @router.post("/{resource_type}/_search")
    async def search_post(request: Request, resource_type: str) -> Response:
        """search.html §3.1.1: POST with form-encoded parameters, same semantics."""
        form = await request.form()
        items = list(request.query_params.multi_items()) + [
            (k, str(v)) for k, v in form.multi_items()]
        return await _search(request, resource_type, items)

    async def _search(request: Request, resource_type: str, items: list[tuple[str, str]]
                      ) -> Response:
        lenient = "handling=lenient" in request.headers.get("prefer", "").replace(" ", "")
        state: dict[str, Any] = {}

        def work(ctx: Context) -> Response:
            known_type(resource_type)
            query = searching.parse(registry, resource_type, items, lenient)
            state["query"] = query
            result = searching.run(ctx, registry, query)
            state["total"] = result.total
            return fhir_response(searching.searchset(ctx, query, result))

        def audit(ctx: Context) -> tuple[str, dict[str, Any]]:
            query = state.get("query")
            detail: dict[str, Any] = {"type": resource_type,
                                      "params": [list(p) for p in query.echo] if query else
                                      [list(p) for p in items]}
            if "total" in state:
                detail["total"] = state["total"]
            return "fhir.search", detail

        return await answer(request, work, audit=audit, check=model.check_searches())

    @router.get("/{resource_type}/{resource_id}")
    async def read(request: Request, resource_type: str, resource_id: str) -> Response:
        def work(ctx: Context) -> Response:
            known_type(resource_type)
            provider = registry.for_id(resource_type, resource_id)
            if provider is None or provider.read is None:
                raise FhirError(404, f"{resource_type}/{resource_id} not found")
            resource = provider.read(ctx, resource_id)
            headers = _etag_headers(resource)
            wanted = request.headers.get("if-none-match")
            if wanted and headers.get("ETag") and wanted.strip() in (
                    headers["ETag"], headers["ETag"][2:]):
                return Response(status_code=304, headers=headers)
            return fhir_response(resource, headers=headers)

        return await answer(request, work, audit=lambda ctx: (
            "fhir.read", {"type": resource_type, "id": resource_id}))

    @router.post("/{resource_type}")
    async def create(request: Request, resource_type: str) -> Response:
        body = await _json_body(request)

        def work(ctx: Context) -> Response:
            known_type(resource_type)
            if isinstance(body, FhirError):
                raise body
            provider = next((p for p in registry.providers(resource_type) if p.create), None)
            if provider is None or provider.create is None:
                raise FhirError(405, f"create of {resource_type} is not supported")
            _same_type(body, resource_type)
            stored = provider.create(ctx, body)
            headers = _etag_headers(stored) | {
                "Location": ctx.url(f"{resource_type}/{stored['id']}")}
            return fhir_response(stored, 201, headers)

        return await answer(request, work, write=True, audit=lambda ctx: (
            "fhir.create", {"type": resource_type}))

    @router.put("/{resource_type}/{resource_id}")
    async def update(request: Request, resource_type: str, resource_id: str) -> Response:
        body = await _json_body(request)

        def work(ctx: Context) -> Response:
            known_type(resource_type)
            if isinstance(body, FhirError):
                raise body
            provider = registry.for_id(resource_type, resource_id)
            if provider is None or provider.update is None:
                raise FhirError(405, f"update of {resource_type} is not supported")
            _same_type(body, resource_type)
            if body.get("id") != resource_id:
                raise FhirError(400, "the resource's id must be the id in the URL")
            stored, created = provider.update(ctx, resource_id, body,
                                              request.headers.get("if-match"))
            return fhir_response(stored, 201 if created else 200, _etag_headers(stored))

        return await answer(request, work, write=True, audit=lambda ctx: (
            "fhir.update", {"type": resource_type, "id": resource_id}))

    @router.patch("/{resource_type}/{resource_id}")
    async def patch(request: Request, resource_type: str, resource_id: str) -> Response:
        body = await _json_body(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip()

        def work(ctx: Context) -> Response:
            known_type(resource_type)
            if isinstance(body, FhirError):
                raise body
            provider = registry.for_id(resource_type, resource_id)
            if provider is None or provider.patch is None:
                raise FhirError(405, f"patch of {resource_type} is not supported")
            stored = provider.patch(ctx, resource_id, body, content_type,
                                    request.headers.get("if-match"))
            return fhir_response(stored, 200, _etag_headers(stored))

        return await answer(request, work, write=True, audit=lambda ctx: (
            "fhir.patch", {"type": resource_type, "id": resource_id}))

    return router


def _same_type(body: Any, resource_type: str) -> None:
    if not isinstance(body, dict) or body.get("resourceType") != resource_type:
        raise FhirError(400, f"the body must be a {resource_type} resource")


MAX_BODY = 16 * 1024 * 1024


async def _json_body(request: Request) -> Any:
    """The JSON body, or the FhirError to answer (raised after authentication, so an
    anonymous caller learns nothing about the body's validity)."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        return FhirError(413, "body too large", code="too-costly")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return FhirError(400, f"body is not JSON: {exc.msg if hasattr(exc, 'msg') else exc}",
                         code="structure")
