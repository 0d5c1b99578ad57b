"""The DAC's pages: the worklist and the request page (issue #14).

A coordinator sees the requests addressed to the structures they belong to (an admin sees
all); a requester sees the requests they sent. Every page is an audited read of the service;
actions are CSRF-checked forms that go through the same workflow as FHIR and HL7, so a
refused transition shows the workflow's own sentence.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from engine.referrals import workflow as wf
from engine.referrals.service import NotFound, Referrals
from engine.ui.auth_adapter import principal
from engine.ui.web import UI, Forbidden, redirect, remote_of

ROLES = ("clinician", "admin")
STATUS_ACTIONS = (wf.ACCEPTED, wf.IN_PROGRESS, wf.ON_HOLD, wf.COMPLETED, wf.CANCELLED)
DONE = frozenset({*wf.STATUSES, "assign", "note", "evaluation", "transfer"})


def _age(authored: str | None) -> float:
    if not authored:
        return 0.0
    at = datetime.fromisoformat(authored)
    return (datetime.now(UTC) - (at if at.tzinfo else at.replace(tzinfo=UTC))).total_seconds()


def _row(r: dict[str, Any]) -> dict[str, Any]:
    rp = r.get("requester") or {}
    return {**r, "age": _age(r.get("authored_at")),
            "requester_name": " ".join(x for x in (rp.get("given"), rp.get("family")) if x)
            or rp.get("organisation") or "—",
            "requester_org": rp.get("organisation") or "",
            "closed": wf.is_closed(r["status"])}


def build_router(ui: UI, referrals: Referrals) -> APIRouter:
    router = APIRouter()

    @router.get("/ui/referrals", response_class=HTMLResponse)
    async def worklist(request: Request) -> Response:
        s = ui.require(request, *ROLES)
        q = request.query_params
        status = q.get("status", "")
        requester = q.get("requester", "").strip()
        rows = await asyncio.to_thread(
            referrals.worklist, principal(s), status=status if status in wf.STATUSES else None,
            requester=requester or None, remote=remote_of(request))
        return ui.render(request, "referrals.html", {
            "rows": [_row(r) for r in rows], "statuses": wf.STATUSES, "status": status,
            "requester": requester}, session=s)

    async def render(request: Request, s: Any, referral_id: int,
                     notice: tuple[str, str] | None, status: int = 200) -> Response:
        try:
            r = await asyncio.to_thread(referrals.read, principal(s), referral_id,
                                        remote_of(request))
        except NotFound:
            raise Forbidden("this request is shown only to its support structure's "
                            "coordinators and to its requester") from None
        return ui.render(request, "referral.html", {
            "r": _row(r), "allowed": sorted(wf.TRANSITIONS[r["status"]]),
            "status_actions": STATUS_ACTIONS, "structures": referrals.structures(),
            "notice": notice}, status=status, session=s)

    @router.get("/ui/referrals/{referral_id}", response_class=HTMLResponse)
    async def page(request: Request, referral_id: int) -> Response:
        s = ui.require(request, *ROLES)
        done = request.query_params.get("done", "")
        notice = ("ok", f"Done: {done}.") if done in DONE else None
        return await render(request, s, referral_id, notice)

    @router.post("/ui/referrals/{referral_id}/action")
    async def act(request: Request, referral_id: int) -> Response:
        s = ui.require(request, *ROLES)
        form = await ui.form_with_csrf(request, s)
        action = form.get("action", "")
        try:
            await asyncio.to_thread(
                referrals.act, principal(s), referral_id, action,
                reason=form.get("reason") or None, note=form.get("note") or None,
                coordinator=form.get("coordinator") or None,
                structure_id=form.get("structure_id") or None, remote=remote_of(request))
        except NotFound:
            raise Forbidden("this request is shown only to its support structure's "
                            "coordinators and to its requester") from None
        except ValueError as exc:  # TransitionError is one: the workflow's sentence, shown
            return await render(request, s, referral_id, ("bad", str(exc)), status=422)
        return redirect(f"/ui/referrals/{referral_id}?done={quote(action)}")

    return router
