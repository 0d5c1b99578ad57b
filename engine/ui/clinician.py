"""The clinician's pages: find a patient, read the coordination timeline, compare results.

Every read goes through the timeline's access rule (care circle, issue #5) and its audit log,
via `auth_adapter`; a page that would show a patient the user may not see answers 403 and
shows nothing of the patient, not even whether it exists. The trend data is embedded in the
page as a JSON data block (not executed; `tojson` escapes it for HTML) so one audited read
builds both the chart and the table under it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from engine.store.ids import clamp_offset, parse_store_id
from engine.ui import auth_adapter
from engine.ui.web import UI, Forbidden, remote_of

EVENT_KINDS = ("stay", "movement", "result", "document", "order", "appointment",
               "referral")


def build_router(ui: UI) -> APIRouter:
    router = APIRouter()
    engine = ui.engine

    @router.get("/ui/patients", response_class=HTMLResponse)
    async def patients(request: Request) -> Response:
        s = ui.require(request)
        identifier = request.query_params.get("identifier", "").strip()
        found: list[dict[str, Any]] | None = []
        if identifier:
            found = await asyncio.to_thread(auth_adapter.find_patients, engine, s, identifier,
                                            remote_of(request))
            if found is None:
                raise Forbidden(f"the role {s.role} may not read patient records (issue #5: "
                                "clinicians of the care circle, and administrators)")
        return ui.render(request, "patients.html", {"identifier": identifier,
                                                    "found": found}, session=s)

    @router.get("/ui/patients/{patient_id}", response_class=HTMLResponse)
    async def patient(request: Request, patient_id: str) -> Response:
        s = ui.require(request)
        q = request.query_params
        kind = q.get("kind", "")
        loinc = q.get("loinc", "").strip()
        offset = clamp_offset(q.get("offset"))
        if parse_store_id(patient_id) is None:
            return ui.render(request, "error.html", {"title": "Not found", "message":
                             "No such patient: a patient id is a number from 1 to 2^63 − 1."},
                             status=404, session=s)
        view = await asyncio.to_thread(
            auth_adapter.patient_view, engine, s, patient_id, remote_of(request),
            kind if kind in EVENT_KINDS else None, loinc or None, offset)
        if view is None:
            raise Forbidden("you may not read this patient's record: it is shown only to "
                            "the clinicians of the patient's care circle")
        referrals = getattr(engine, "referrals", None)  # issue #14, read once access held
        requests = (await asyncio.to_thread(referrals.for_patient, int(patient_id))
                    if referrals is not None else [])
        return ui.render(request, "patient.html", {"referrals": requests,
            "p": view["patient"], "events": view["events"], "kinds": EVENT_KINDS,
            "kind": kind, "codes": view["codes"], "loinc": loinc,
            "series": view["series"], "page": view["page"], "patient_id": patient_id},
            session=s)

    return router
