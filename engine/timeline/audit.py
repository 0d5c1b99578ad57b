"""The audit log of patient data reads: who, which patient, what, when, from where.

Append-only: this module only inserts, and the migration's triggers refuse UPDATE/DELETE.
Denied attempts are written too — an attempt to read outside one's care circle is exactly
what an audit is for.

A row says what actually happened (issue #17): ``outcome`` is the answer the caller got —
allowed, denied, not_found (a document absent or masked to the caller: the 404) or error
(the read failed: a 500) — and ``detail`` holds every parameter that changes what was read
(filters, include_inactive, paging). Failed authentications are rows too (action
``authenticate``, outcome denied): who the credential claimed to be, from where, and why it
was refused — never the credential. A request to a patient-data route that fails before
any row was written still leaves one, from `AuditedRequests` (the exception path).
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from engine.timeline.auth import Principal, Refusal
from engine.timeline.models import audit_log

# What the reader actually got; `break_glass` is an access the reader's ordinary rights would
# not have given (the DMP's bris de glace, engine/fhir/dmp.py), kept apart for review.
OUTCOMES = ("allowed", "denied", "not_found", "error", "break_glass")



class _Request:
    """What the audit knows of the request being served: the caller once authenticated,
    the outcomes written. Shared with the threads the request starts (asyncio.to_thread
    copies the context; this object is the same one)."""

    __slots__ = ("who", "outcomes")

    def __init__(self) -> None:
        self.who: Principal | None = None
        self.outcomes: list[str] = []


_request: ContextVar[_Request | None] = ContextVar("audit_request", default=None)


def note_caller(who: Principal) -> None:
    """The request's caller, so that a failure row names who made the request."""
    current = _request.get()
    if current is not None:
        current.who = who


def record(db: Engine, who: Principal | None, action: str, *, patient_ids: list[int] | None,
           remote: str | None, outcome: str = "allowed",
           detail: dict[str, Any] | None = None, actor: str | None = None) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {OUTCOMES}")
    current = _request.get()
    if current is not None:
        current.outcomes.append(outcome)
    now = datetime.now(UTC)
    rows = [{"at": now, "actor": actor or (who.username if who else "anonymous"),
             "role": who.role if who else None, "patient_id": pid, "action": action,
             "detail": json.dumps(detail or {}, ensure_ascii=False, sort_keys=True),
             "remote": remote, "outcome": outcome}
            for pid in (patient_ids or [None])]
    with db.begin() as conn:
        conn.execute(insert(audit_log), rows)


def record_refusal(db: Engine, refusal: Refusal, remote: str | None, where: str) -> None:
    """A failed authentication: the claimed identity as actor, the reason in the detail."""
    # The actor column holds who was claimed, so a search by user finds the attempts too.
    record(db, None, "authenticate", patient_ids=None, remote=remote, outcome="denied",
           actor=f"claimed:{refusal.claimed}"[:128],
           detail={"claimed": refusal.claimed, "reason": refusal.reason, "via": refusal.via,
                   "where": where})


_PATIENT_PATH = re.compile(r"^/(?:api/v1|ui)/patients/(\d{1,18})(?:/|$)")


class AuditedRequests:
    """ASGI middleware for the routes that read patient data: a request that ends in an
    exception (the 500 path) or a 5xx leaves an `error` row, whether or not the handler
    had written its own — so a failed read is never missing from the log, and a row that
    said `allowed` is followed by the truth."""

    PREFIXES = ("/api/v1/", "/ui/patients", "/ui/messages/", "/fhir/")

    def __init__(self, app: Any, db: Engine) -> None:
        self.app = app
        self.db = db

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope.get("type") != "http" or not path.startswith(self.PREFIXES):
            await self.app(scope, receive, send)
            return
        current = _Request()
        token = _request.set(current)
        status: list[int] = []

        async def sending(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                status.append(int(message.get("status", 0)))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            self._error(scope, path, type(exc).__name__, current.who)
            raise
        else:
            if status and status[0] >= 500:
                self._error(scope, path, f"HTTP {status[0]}", current.who)
        finally:
            _request.reset(token)

    def _error(self, scope: dict[str, Any], path: str, what: str, who: Principal | None
               ) -> None:
        # Written synchronously: the request is already failing, and the row must not be
        # lost to a cancelled task.
        m = _PATIENT_PATH.match(path)
        client = scope.get("client")
        remote = f"{client[0]}:{client[1]}" if client else None
        try:
            record(self.db, who, "request_failed",
                   patient_ids=[int(m.group(1))] if m else None, remote=remote,
                   outcome="error", detail={"path": path, "method": scope.get("method"),
                                            "error": what})
        except Exception:  # the store itself may be what failed; the log line stays
            logging.getLogger("parcours.audit").error(
                "could not write the audit row of a failed request", extra={"path": path})


def entries(db: Engine, patient_id: int | None = None, limit: int = 1000
            ) -> list[dict[str, Any]]:
    q = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if patient_id is not None:
        q = q.where(audit_log.c.patient_id == patient_id)
    with db.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]
