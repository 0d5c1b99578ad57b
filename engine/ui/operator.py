"""Operator pages: dashboard, messages, routes, mapping backlog (role operator or admin).

Actions (reprocess, retry, reload, accept a mapping) are POST forms carrying the CSRF token,
answered by a redirect back to the page (post/redirect/get, so a refresh never repeats an
action) with an outcome code the page turns into a sentence; each action is audited.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from engine.store.ids import StoreId, parse_store_id
from engine.ui import auth_adapter, dashboard
from engine.ui import messages as msgs
from engine.ui.hl7_tree import try_parse_tree
from engine.ui.redaction import (
    BREAK_GLASS_SECONDS,
    GRANT_ACTION,
    MIN_REASON_CHARS,
    redacted_view,
    sensitivity,
)
from engine.ui.web import UI, redirect, remote_of

log = logging.getLogger("parcours.ui")

STATUSES = ("accepted", "routed", "done", "failed", "unrouted", "error", "rejected",
            "duplicate")

# Outcome codes → sentences: the redirect carries a code, never text to reflect.
NOTICES = {
    "reprocessed": ("ok", "Message reprocessed through the current routes: {n} new "
                          "deliveries (generation shown below)."),
    "reprocess-none": ("warn", "Message reprocessed: no route produced a delivery."),
    "retried": ("ok", "Delivery put back in line; it will be tried again now."),
    "retry-delivered": ("warn", "That delivery was already delivered: nothing to retry."),
    "retry-pending": ("warn", "That delivery is pending its first attempt: nothing to retry."),
    "retry-route-failed": ("bad", "That delivery was never sent: its route's transformer failed "
                                  "(the error is shown below). Fix the cause, then reprocess "
                                  "the message."),
    "reloaded": ("ok", "routes.yaml reloaded."),
    "reload-refused": ("bad", "routes.yaml has problems: the running routes were kept "
                              "(see the problems below)."),
    "mapped": ("ok", "Mapping written; {n} message(s) carrying the code were reprocessed."),
    "mapping-refused": ("bad", "The mapping was refused (see the reason below)."),
    "conflict-resolved": ("ok", "Conflict resolved."),
    "conflict-refused": ("bad", "That conflict could not be resolved (unknown, already "
                                "resolved, or no record to apply its events to)."),
    "glass-broken": ("warn", "Break-glass recorded in the audit log: the content is shown to "
                             "you for 15 minutes."),
    "glass-refused": ("bad", "Break-glass needs a reason of at least 10 characters."),
}


def _notice(request: Request) -> tuple[str, str] | None:
    code = request.query_params.get("done", "")
    if code not in NOTICES:
        return None
    kind, text = NOTICES[code]
    n = request.query_params.get("n", "")
    return kind, text.format(n=n if n.isdigit() else "?")


def build_router(ui: UI) -> APIRouter:
    router = APIRouter()
    engine = ui.engine

    # -- dashboard --------------------------------------------------------------------------

    @router.get("/ui/dashboard", response_class=HTMLResponse)
    async def dashboard_page(request: Request) -> Response:
        s = ui.operator(request)
        snap = await asyncio.to_thread(dashboard.snapshot, engine)
        dead = await asyncio.to_thread(msgs.failed_deliveries, engine.store)
        found = await asyncio.to_thread(dashboard.conflicts, engine)
        if found:  # the evidence (INS, names, birth dates) is patient data: audited
            ids = sorted({p for c in found for p in (c["patient_id"], c["other_patient_id"])
                          if p})
            await asyncio.to_thread(auth_adapter.audit_patients, engine, s, ids,
                                    "ui.conflicts", remote_of(request),
                                    {"conflicts": len(found)})
        return ui.render(request, "dashboard.html", {"snap": snap, "dead": dead,
                                                     "conflicts": found,
                                                     "notice": _notice(request)}, session=s)

    @router.post("/ui/conflicts/{conflict_id}/resolve")
    async def resolve_conflict(request: Request, conflict_id: StoreId) -> Response:
        """Apply a held conflict's events to the record its local id names, or dismiss it;
        the same decision as `parcours conflicts resolve`."""
        s = ui.operator(request)
        form = await ui.form_with_csrf(request, s)
        action = form.get("action", "")
        try:
            out = await asyncio.to_thread(engine.timeline.resolve_conflict, conflict_id,
                                          s.username, action)
        except ValueError:
            return redirect("/ui/dashboard?done=conflict-refused#conflicts")
        await asyncio.to_thread(auth_adapter.audit_patients, engine, s,
                                [out["patient_id"]] if out["patient_id"] else [],
                                "ui.conflict_resolve", remote_of(request),
                                {"conflict": conflict_id, "action": action})
        log.info("operator resolved a conflict",
                 extra={"conflict_id": conflict_id, "user": s.username, "action": action})
        return redirect("/ui/dashboard?done=conflict-resolved#conflicts")

    @router.get("/ui/api/dashboard")
    async def dashboard_json(request: Request) -> JSONResponse:
        ui.operator(request)
        snap = await asyncio.to_thread(dashboard.snapshot, engine)
        snap["throughput"] = await asyncio.to_thread(dashboard.throughput, engine)
        return JSONResponse(snap, headers={"Cache-Control": "no-store"})

    # -- messages -------------------------------------------------------------------------

    @router.get("/ui/messages", response_class=HTMLResponse)
    async def messages_page(request: Request) -> Response:
        s = ui.operator(request)
        q = request.query_params
        before = q.get("before", "")
        search = msgs.Search(
            since=msgs.parse_when(q.get("since")), until=msgs.parse_when(q.get("until")),
            channel=q.get("channel", ""), type=q.get("type", ""), status=q.get("status", ""),
            control_id=q.get("control_id", ""), patient=q.get("patient", ""),
            flag=q.get("flag", ""), before_id=parse_store_id(before))
        rows = await asyncio.to_thread(msgs.search, engine.store, search)
        channels = await asyncio.to_thread(msgs.channels_seen, engine.store)
        if rows:
            # A result list shows patient identifiers: that is a read of patient data.
            keys = sorted({r["patient_key"] for r in rows if r["patient_key"]})
            await asyncio.to_thread(auth_adapter.audit_many, engine, s, keys,
                                    "ui.message_search", remote_of(request),
                                    {"results": len(rows)})
        next_query = None
        if len(rows) == msgs.PAGE:
            params = {k: v for k, v in q.items() if k != "before"}
            params["before"] = str(rows[-1]["id"])
            from urllib.parse import urlencode

            next_query = urlencode(params)
        return ui.render(request, "messages.html", {
            "rows": rows, "q": q, "channels": sorted(set(channels) | engine.running_channels()),
            "statuses": STATUSES, "next_query": next_query}, session=s)

    @router.get("/ui/messages/{message_id}", response_class=HTMLResponse)
    async def message_page(request: Request, message_id: StoreId) -> Response:
        s = ui.operator(request)
        row = await asyncio.to_thread(engine.store.get_message, message_id)
        if row is None:
            return ui.render(request, "error.html", {"title": "Not found",
                             "message": f"No message {message_id}."}, status=404, session=s)
        raw = msgs.message_text(row)
        is_xml = row.get("message_type") == "CDA" or row.get("charset") == "xml"
        tree, tree_error = ([], "a CDA document: shown as received") if is_xml else \
            try_parse_tree(raw, row.get("version"))
        # Issue #17: masked / confidentiality-V content only after an audited break-glass.
        withheld = await asyncio.to_thread(sensitivity, bytes(row.get("raw") or b""),
                                           row.get("message_type"))
        glass_open = bool(withheld) and await asyncio.to_thread(
            auth_adapter.break_glass_open, engine, s.username, message_id, GRANT_ACTION,
            BREAK_GLASS_SECONDS)
        if withheld and not glass_open:
            view = redacted_view(withheld)
            raw, tree, tree_error = view["raw"], view["tree"], view["tree_error"]
        await asyncio.to_thread(auth_adapter.audit_many, engine, s,
                                [row["patient_key"]] if row["patient_key"] else [],
                                "ui.message", remote_of(request),
                                {"message_id": message_id, "withheld": withheld,
                                 "content_shown": not withheld or glass_open})
        deliveries = await asyncio.to_thread(msgs.deliveries_of, engine.store, message_id)
        return ui.render(request, "message.html", {
            "m": row, "raw": raw, "ack": msgs.message_text(row, "ack"),
            "app_ack": msgs.message_text(row, "app_ack"), "tree": tree,
            "tree_error": tree_error, "deliveries": deliveries,
            "withheld": withheld, "glass_open": glass_open,
            "notice": _notice(request)}, session=s)

    @router.post("/ui/messages/{message_id}/break-glass")
    async def break_glass(request: Request, message_id: StoreId) -> Response:
        """Show withheld content to this operator for a while: a written reason, audited."""
        s = ui.operator(request)
        form = await ui.form_with_csrf(request, s)
        reason = " ".join(str(form.get("reason", "")).split())[:500]
        row = await asyncio.to_thread(engine.store.get_message, message_id)
        if row is None:
            return ui.render(request, "error.html", {"title": "Not found",
                             "message": f"No message {message_id}."}, status=404, session=s)
        if len(reason) < MIN_REASON_CHARS:
            return redirect(f"/ui/messages/{message_id}?done=glass-refused")
        # The audit row is the grant (BreakGlass reads it back).
        await asyncio.to_thread(auth_adapter.audit_many, engine, s,
                                [row["patient_key"]] if row["patient_key"] else [],
                                GRANT_ACTION, remote_of(request),
                                {"message_id": message_id, "reason": reason},
                                outcome="break_glass")
        log.warning("operator broke the glass on a withheld message",
                    extra={"message_id": message_id, "user": s.username})
        return redirect(f"/ui/messages/{message_id}?done=glass-broken")

    @router.post("/ui/messages/{message_id}/reprocess")
    async def reprocess(request: Request, message_id: StoreId) -> Response:
        s = ui.operator(request)
        await ui.form_with_csrf(request, s)
        row = await asyncio.to_thread(engine.store.get_message, message_id)
        if row is None:
            return ui.render(request, "error.html", {"title": "Not found",
                             "message": f"No message {message_id}."}, status=404, session=s)
        if row.get("pruned_at") is not None:
            return ui.render(request, "error.html", {"title": "Payload removed",
                             "message": f"Message {message_id}: its raw bytes were removed by "
                                        "retention; it cannot be reprocessed."},
                             status=409, session=s)
        n = await asyncio.to_thread(engine.replay, message_id)
        await asyncio.to_thread(auth_adapter.audit_many, engine, s,
                                [row["patient_key"]] if row["patient_key"] else [],
                                "ui.reprocess", remote_of(request),
                                {"message_id": message_id, "deliveries": n})
        log.info("operator reprocessed a message",
                 extra={"message_id": message_id, "user": s.username, "deliveries": n})
        code = "reprocessed" if n else "reprocess-none"
        return redirect(f"/ui/messages/{message_id}?done={code}&n={n}")

    @router.post("/ui/deliveries/{delivery_id}/retry")
    async def retry(request: Request, delivery_id: StoreId) -> Response:
        s = ui.operator(request)
        await ui.form_with_csrf(request, s)
        d = await asyncio.to_thread(msgs.delivery, engine.store, delivery_id)
        if d is None:
            return ui.render(request, "error.html", {"title": "Not found",
                             "message": f"No delivery {delivery_id}."}, status=404, session=s)
        refused: dict[int, str] = {}
        await asyncio.to_thread(engine.retry, [delivery_id], refused)
        await asyncio.to_thread(auth_adapter.audit_many, engine, s,
                                [d["patient_key"]] if d["patient_key"] else [],
                                "ui.retry", remote_of(request),
                                {"delivery_id": delivery_id, "message_id": d["message_id"],
                                 "destination": d["destination"]})
        log.info("operator retried a delivery",
                 extra={"delivery_id": delivery_id, "user": s.username})
        code = "retried"
        if delivery_id in refused:
            code = {"delivered": "retry-delivered", "pending": "retry-pending"}.get(
                d["status"], "retry-route-failed")
        return redirect(f"/ui/messages/{d['message_id']}?done={code}#deliveries")

    # -- routes ---------------------------------------------------------------------------

    def _routes_context() -> dict[str, Any]:
        from engine.config import ConfigError, load_file

        path = Path(engine.settings.routes_file)
        on_disk: str | None = None
        problems: list[str] = []
        try:
            on_disk = path.read_text(encoding="utf-8")
            load_file(path, env=engine.settings.interpolation_env())
        except FileNotFoundError:
            problems = [f"{path}: not found (the running routes came from elsewhere)"]
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
        except OSError as exc:
            problems = [f"{path}: {exc.strerror}"]
        return {
            "file": str(path), "running_text": engine.config.text,
            "disk_text": on_disk, "differs": on_disk is not None
            and on_disk != engine.config.text, "problems": problems,
            "last_reload": engine.last_reload,
            "routes": engine.config.routes, "destinations": engine.config.destinations,
            "channels": sorted(engine.config.channels), "evaluation": engine.config.evaluation,
        }

    @router.get("/ui/routes", response_class=HTMLResponse)
    async def routes_page(request: Request) -> Response:
        s = ui.operator(request)
        ctx = await asyncio.to_thread(_routes_context)
        return ui.render(request, "routes.html", {**ctx, "notice": _notice(request),
                                                  "dry": None, "sample": "",
                                                  "dry_channel": "main"}, session=s)

    @router.post("/ui/routes/dry-run", response_class=HTMLResponse)
    async def dry_run(request: Request) -> Response:
        """Same information as `parcours routes test`; nothing is stored, sent or logged."""
        s = ui.operator(request)
        form = await ui.form_with_csrf(request, s)
        sample = form.get("message", "")
        channel = form.get("channel", "main") or "main"
        from engine.ui.dry_run import dry_run as run

        dry = await asyncio.to_thread(run, engine.evaluate_routes, sample, channel)
        ctx = await asyncio.to_thread(_routes_context)
        return ui.render(request, "routes.html", {**ctx, "notice": None, "dry": dry,
                                                  "sample": sample, "dry_channel": channel},
                         session=s)

    @router.post("/ui/routes/reload")
    async def reload(request: Request) -> Response:
        s = ui.operator(request)
        await ui.form_with_csrf(request, s)
        result = await engine.reload()
        await asyncio.to_thread(auth_adapter.audit_action, engine, s, "ui.routes_reload",
                                remote_of(request), {"ok": result["ok"]})
        log.info("operator reloaded routes", extra={"user": s.username, "ok": result["ok"]})
        return redirect("/ui/routes?done=" + ("reloaded" if result["ok"] else "reload-refused"))

    # -- mapping backlog ------------------------------------------------------------------

    def _backlog() -> list[dict[str, Any]]:
        from engine.routing.backlog import open_entries
        from loinc.catalogue import load_catalogue
        from loinc.suggest import suggest

        catalogue = _catalogue(load_catalogue)
        out = []
        for e in open_entries(engine.store):
            e = dict(e)
            e["suggestions"] = suggest(e["text"] or e["code"], catalogue=catalogue,
                                       unit=e["unit"] or None, code=e["code"], limit=5)
            out.append(e)
        return out

    @router.get("/ui/backlog", response_class=HTMLResponse)
    async def backlog_page(request: Request) -> Response:
        s = ui.operator(request)
        entries = await asyncio.to_thread(_backlog)
        return ui.render(request, "backlog.html", {
            "entries": entries, "notice": _notice(request),
            "refusal": None}, session=s)

    @router.post("/ui/backlog/accept", response_class=HTMLResponse)
    async def backlog_accept(request: Request) -> Response:
        s = ui.operator(request)
        form = await ui.form_with_csrf(request, s)
        sender, code = form.get("sender", ""), form.get("code", "")
        loinc = (form.get("loinc_other") or form.get("loinc") or "").strip()
        system = form.get("coding_system")
        unit = form.get("unit") or None

        def work() -> tuple[str | None, int]:
            from engine.routing.backlog import accept
            from mappings.loader import MappingError

            try:
                _path, message_ids = accept(engine.store, engine.settings.mappings_dir, sender,
                                            code, loinc, coding_system=system, unit=unit)
            except (MappingError, ValueError) as exc:
                return str(exc), 0
            # The router's normalisation must see the new mapping before the replays.
            engine.reload_mappings()
            for mid in message_ids:
                engine.replay(mid)
            return None, len(message_ids)

        refusal, count = await asyncio.to_thread(work)
        await asyncio.to_thread(auth_adapter.audit_action, engine, s, "ui.mapping_accept",
                                remote_of(request),
                                {"sender": sender, "code": code, "loinc": loinc,
                                 "refused": refusal, "reprocessed": count})
        if refusal is None:
            return redirect(f"/ui/backlog?done=mapped&n={count}")
        entries = await asyncio.to_thread(_backlog)
        return ui.render(request, "backlog.html", {
            "entries": entries, "notice": NOTICES["mapping-refused"][:2],
            "refusal": refusal}, status=422, session=s)

    return router


_catalogue_cache: list[Any] = []


def _catalogue(load: Any) -> Any:
    """The LOINC subset is read once per process: it does not change while the engine runs."""
    if not _catalogue_cache:
        _catalogue_cache.append(load())
    return _catalogue_cache[0]
