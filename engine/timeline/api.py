"""HTTP API of the coordination timeline: /api/v1 (OpenAPI at /openapi.json).

No endpoint answers without a bearer token (opaque or OIDC JWT): 401 without or with a bad
one, 403 for a role that may not read patient data or a patient outside the caller's care
circle (the same answer whether or not the patient exists), 404 for a document that does not
exist or is masked to the caller. Every read is audited by `Timeline`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from engine.store.ids import MAX_STORE_ID, Offset, StoreId
from engine.timeline import audit
from engine.timeline.auth import Principal, Refusal
from engine.timeline.service import Denied, Timeline

EVENT_TYPES = ("stay", "movement", "result", "document", "order", "appointment", "referral")


def remote_of(request: Request) -> str | None:
    return f"{request.client.host}:{request.client.port}" if request.client else None


def build_router(timeline: Timeline) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["timeline"])

    async def principal(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise HTTPException(401, "bearer token required",
                                headers={"WWW-Authenticate": "Bearer"})
        found = await asyncio.to_thread(timeline.auth.identify, credential.strip())
        if isinstance(found, Refusal):
            # Issue #17: a failed authentication is audited — who it claimed to be, from
            # where, why refused — never the token.
            await asyncio.to_thread(audit.record_refusal, timeline.db, found,
                                    remote_of(request), request.url.path)
            raise HTTPException(401, "invalid, expired or revoked token",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        audit.note_caller(found)
        return found

    auth_dep = Depends(principal)
    forbidden = HTTPException(403, "not allowed to read this patient's record")

    @router.get("/patients")
    async def find(request: Request,
                   identifier: Annotated[str, Query(min_length=1, max_length=300)],
                   who: Principal = auth_dep) -> dict[str, Any]:
        """Patients by identifier: `INS|<value>`, `<authority>|<value>` or `<value>`."""
        try:
            found = await asyncio.to_thread(timeline.find_patients, who, identifier,
                                            remote_of(request))
        except Denied:
            raise forbidden from None
        return {"patients": found}

    @router.get("/patients/{patient_id}")
    async def patient(request: Request, patient_id: StoreId, who: Principal = auth_dep
                      ) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(timeline.read_patient, who, patient_id,
                                           remote_of(request))
        except Denied:
            raise forbidden from None

    @router.get("/patients/{patient_id}/timeline")
    async def patient_timeline(
        request: Request, patient_id: StoreId,
        type: Annotated[list[str] | None, Query(description="event types")] = None,  # noqa: A002
        start: Annotated[datetime | None, Query(alias="from")] = None,
        end: Annotated[datetime | None, Query(alias="to")] = None,
        include_inactive: bool = False,
        offset: Offset = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        who: Principal = auth_dep,
    ) -> dict[str, Any]:
        """Events newest first; `type` (repeatable): stay, movement, result, document, order,
        appointment; `from`/`to`: ISO 8601 period; cancelled/deleted/replaced events only
        with `include_inactive=true`."""
        bad = [t for t in type or [] if t not in EVENT_TYPES]
        if bad:
            raise HTTPException(422, f"unknown event type(s) {bad}; use {list(EVENT_TYPES)}")
        try:
            return await asyncio.to_thread(
                lambda: timeline.read_timeline(
                    who, patient_id, remote_of(request), types=type, start=start, end=end,
                    include_inactive=include_inactive, offset=offset, limit=limit))
        except Denied:
            raise forbidden from None

    @router.get("/patients/{patient_id}/observations")
    async def series(request: Request, patient_id: StoreId,
                     loinc: Annotated[str, Query(pattern=r"^\d{1,7}-\d$")],
                     who: Principal = auth_dep) -> dict[str, Any]:
        """One analyte across laboratories in its canonical unit, with provenance."""
        try:
            return await asyncio.to_thread(timeline.read_series, who, patient_id, loinc,
                                           remote_of(request))
        except Denied:
            raise forbidden from None

    @router.get("/documents/{document_id}")
    async def document(request: Request, document_id: StoreId, who: Principal = auth_dep
                       ) -> Response:
        """The original CDA document, byte for byte as received."""
        try:
            found = await asyncio.to_thread(timeline.read_document, who, document_id,
                                            remote_of(request))
        except Denied:
            raise forbidden from None
        if found is None:
            raise HTTPException(404, "no such document")
        content, ctype = found
        return Response(content, media_type=ctype)

    @router.get("/conflicts")
    async def list_conflicts(
        request: Request,
        status: Annotated[str, Query(pattern="^(open|resolved|all)$")] = "open",
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        who: Principal = auth_dep,
    ) -> dict[str, Any]:
        """Identity and document conflicts held for an operator, with their evidence (both
        INS, both demographics, the message ids). Roles operator and admin; audited."""
        try:
            rows = await asyncio.to_thread(timeline.list_conflicts, who, remote_of(request),
                                           None if status == "all" else status, limit)
        except Denied:
            raise HTTPException(403, "conflicts are for operators and admins") from None
        return {"conflicts": rows}

    @router.post("/conflicts/{conflict_id}/resolve")
    async def resolve_conflict(request: Request, conflict_id: StoreId,
                               body: Annotated[dict[str, Any], Body()],
                               who: Principal = auth_dep) -> dict[str, Any]:
        """`{"action": "apply" | "dismiss", "patient_id": N, "note": "…"}`: apply a held
        conflict's events to a patient (default: the record its local id names), identity
        untouched, or dismiss it (its events stay held); either way it is resolved."""
        if who.role not in ("admin", "operator"):
            raise HTTPException(403, "conflicts are for operators and admins")
        action = body.get("action")
        target = body.get("patient_id")
        if target is not None and (not isinstance(target, int) or isinstance(target, bool)
                                   or not 1 <= target <= MAX_STORE_ID):
            raise HTTPException(422, "patient_id must be a store id (1 … 2^63 − 1)")
        try:
            out = await asyncio.to_thread(timeline.resolve_conflict, conflict_id,
                                          who.username, str(action), target,
                                          body.get("note"))
        except ValueError as exc:
            code = 409 if "already" in str(exc) else 404 if "no conflict" in str(exc) else 422
            raise HTTPException(code, str(exc)) from None
        ids = [p for p in (out["patient_id"], target) if p is not None]
        await asyncio.to_thread(audit.record, timeline.db, who, "conflict_resolve",
                                patient_ids=ids or None, remote=remote_of(request),
                                detail={"conflict": conflict_id, "action": action})
        return out

    return router
