"""Requests for support as one model, whichever door they came in by (HL7 REF, FHIR, the UI).

Every change goes through `_change` inside the caller's transaction: the workflow check,
the referral row, a history row (who, when, what) and the matching timeline event, and the
care circle (the structure's coordinators are granted access when it accepts; the grants end
`grace_days` after the request closes). HL7 events are applied by the timeline's applier
(idempotent per message and delivery generation); the UI and FHIR call `act`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from engine.referrals import workflow as wf
from engine.referrals.models import (
    referral_history,
    referrals,
    structure_members,
    support_structures,
)
from engine.referrals.replies import StatusReplies
from engine.timeline import audit
from engine.timeline.apply import ts as _ts
from engine.timeline.auth import Principal
from engine.timeline.identity import survivor
from engine.timeline.models import care_circle, timeline_events, users

STRUCTURE_CACHE_S = 5.0  # how stale intake's list of known structures may be


class NotFound(LookupError):
    """No such request, or not one this user may see (the same answer for both)."""


@dataclass(frozen=True)
class ReferralSettings:
    # After a request closes, its structure's coordinators keep reading the patient's
    # timeline this many days (to finish the file), then the grant ends.
    grace_days: float = 30.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ReferralSettings:
        e = os.environ if env is None else env
        return cls(grace_days=float(e.get("PARCOURS_REFERRAL_GRACE_DAYS", "30")))


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)


def _iso(v: Any) -> Any:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
    return v


def _label(coded: dict[str, str] | None) -> str | None:
    if not coded:
        return None
    return (coded.get("display") or coded.get("code") or None)


def _priority(coded: dict[str, str] | None) -> str | None:
    """HL7 table 0280 → FHIR request-priority (S stat, A asap, R routine)."""
    if not coded:
        return None
    return {"S": "stat", "A": "asap", "R": "routine"}.get(coded.get("code") or "",
                                                         coded.get("code") or None)


def details_from_hl7(ev: dict[str, Any]) -> dict[str, Any]:
    """The columns a REF event sets (I12 and I13 alike)."""
    provs = ev.get("providers") or []
    rp = next((p for p in provs if p.get("role") == "RP"), None)
    rt = next((p for p in provs if p.get("role") == "RT"), None)
    return {
        "structure_id": rt.get("structure_id") if rt else None,
        "priority": _priority(ev.get("priority")),
        "type": _label(ev.get("referral_type")),
        "reason": _label(ev.get("reason")),
        "requester": _dumps(rp) if rp else None,
        "performer": _dumps(rt) if rt else None,
        "authored_at": _ts(ev.get("effective")) or _ts(ev.get("at")),
        "expires_at": _ts(ev.get("expires")),
        "data": _dumps({k: ev.get(k) for k in ("diagnoses", "notes", "observations",
                                              "requested", "disposition", "category",
                                              "external_ids")}),
    }


class Referrals:
    def __init__(self, db: Engine, settings: ReferralSettings | None = None) -> None:
        self.db = db
        self.settings = settings or ReferralSettings.from_env()
        # RRI^I12 to the requester for each change made here (engine/referrals/replies.py).
        self.replies: StatusReplies | None = None
        self._known: tuple[float, frozenset[str]] = (0.0, frozenset())

    # -- structures and their coordinators ------------------------------------------------

    def add_structure(self, structure_id: str, name: str) -> None:
        with self.db.begin() as conn:
            found = conn.execute(select(support_structures.c.id).where(
                support_structures.c.id == structure_id)).first()
            if found:
                conn.execute(update(support_structures).where(
                    support_structures.c.id == structure_id).values(name=name))
            else:
                conn.execute(insert(support_structures).values(
                    id=structure_id, name=name, created_at=datetime.now(UTC)))
        self._known = (0.0, frozenset())

    def add_member(self, structure_id: str, username: str) -> None:
        with self.db.begin() as conn:
            uid = conn.execute(select(users.c.id).where(users.c.username == username)).scalar()
            if uid is None:
                raise ValueError(f"no user {username!r}")
            if conn.execute(select(support_structures.c.id).where(
                    support_structures.c.id == structure_id)).first() is None:
                raise ValueError(f"no support structure {structure_id!r}")
            if conn.execute(select(structure_members).where(
                    structure_members.c.structure_id == structure_id,
                    structure_members.c.user_id == uid)).first() is None:
                conn.execute(insert(structure_members).values(
                    structure_id=structure_id, user_id=uid, created_at=datetime.now(UTC)))

    def structures(self) -> list[dict[str, Any]]:
        with self.db.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(support_structures).order_by(support_structures.c.id)).mappings()]

    def known_structure(self, structure_id: str) -> bool:
        """For intake's check of a REF (on the event loop): a small cached set, read again
        at most every few seconds, so a structure added by the CLI is known soon after."""
        at, known = self._known
        if time.monotonic() - at > STRUCTURE_CACHE_S:
            with self.db.connect() as conn:
                known = frozenset(conn.execute(select(support_structures.c.id)).scalars())
            self._known = (time.monotonic(), known)
        return structure_id in known

    def _member_structures(self, conn: Connection, who: Principal) -> set[str] | None:
        """None: every structure (admin); else the structures the user coordinates."""
        if who.role == "admin":
            return None
        if who.user_id is None:
            return set()
        return set(conn.execute(select(structure_members.c.structure_id).where(
            structure_members.c.user_id == who.user_id)).scalars())

    # -- HL7 (called by the timeline's applier, inside its transaction) ------------------

    def apply_hl7(self, conn: Connection, patient_id: int, ev: dict[str, Any], message_id: int,
                  received: datetime, source: str = "hl7") -> None:
        """A request as a requester sent it — REF^I12/I13/I14, or a FHIR ServiceRequest put in
        the same shape (`source` fhir, message id 0): created, modified or cancelled."""
        key = ev["key"][:512]
        row = conn.execute(select(referrals).where(referrals.c.key == key)).mappings().first()
        actor = self._requester_name(ev)
        at = _ts(ev.get("at")) or received
        if row is not None and self._seen(conn, row["id"], message_id):
            return  # a newer delivery generation of a message already applied
        if ev["action"] == "cancel":
            if row is None:  # I14 before its I12: a tombstone the request will find
                rid = self._insert(conn, key, ev, patient_id, wf.CANCELLED, message_id or None,
                                   tombstone=True, source=source)
                self._history(conn, rid, patient_id, key, wf.CANCELLED, wf.CANCELLED, actor,
                              at, message_id, {"tombstone": True})
            elif not wf.is_closed(row["status"]):
                self._change(conn, row, wf.CANCELLED, actor, at, message_id)
            return
        status = ev.get("initial_status") or wf.FROM_RF1.get(ev.get("status_code") or "",
                                                             wf.REQUESTED)
        if row is None:
            rid = self._insert(conn, key, ev, patient_id, status, message_id or None,
                               source=source)
            self._history(conn, rid, patient_id, key, "created", status, actor, at,
                          message_id, {"trigger": ev.get("trigger")})
            if status in wf.WITH_ACCESS:
                self._grant(conn, rid, patient_id, details_from_hl7(ev)["structure_id"])
            return
        details = details_from_hl7(ev)
        if row["tombstone"]:  # the request after its cancellation: details, still cancelled
            conn.execute(update(referrals).where(referrals.c.id == row["id"]).values(
                **details, tombstone=False, patient_id=patient_id, updated_at=datetime.now(UTC)))
            self._history(conn, row["id"], patient_id, key, "created", row["status"], actor,
                          at, message_id, {"trigger": ev.get("trigger"),
                                           "cancelled_before_arrival": True})
            return
        # what the message leaves out (an I13 without its RT PRD, no RF1-8…) is kept
        changed = {k: v for k, v in details.items() if v is not None and row[k] != v
                   and not (isinstance(v, datetime) and row[k] is not None
                            and _ts(_iso(row[k])) == v)}
        if changed and not wf.is_closed(row["status"]):
            conn.execute(update(referrals).where(referrals.c.id == row["id"]).values(
                **changed, updated_at=datetime.now(UTC),
                message_id=message_id or row["message_id"]))
            self._history(conn, row["id"], patient_id, key, "modified", row["status"], actor,
                          at, message_id, {"fields": sorted(changed)})
        if ev["action"] == "modify" and status != row["status"] and (
                status != wf.REQUESTED or "initial_status" in ev):
            try:
                wf.check(row["status"], status)
            except wf.TransitionError as exc:
                self._history(conn, row["id"], patient_id, key, "refused", row["status"],
                              actor, at, message_id, {"reason": str(exc)})
                return
            fresh = conn.execute(select(referrals).where(referrals.c.id == row["id"])
                                 ).mappings().one()
            self._change(conn, fresh, status, actor, at, message_id)

    @staticmethod
    def _requester_name(ev: dict[str, Any]) -> str:
        rp = next((p for p in ev.get("providers") or [] if p.get("role") == "RP"), None)
        if rp is None:
            return "requester"
        name = " ".join(x for x in (rp.get("given"), rp.get("family")) if x)
        return name or rp.get("professional_id") or "requester"

    @staticmethod
    def _seen(conn: Connection, referral_id: int, message_id: int) -> bool:
        return message_id > 0 and conn.execute(select(referral_history.c.id).where(
            referral_history.c.referral_id == referral_id,
            referral_history.c.message_id == message_id)).first() is not None

    def _insert(self, conn: Connection, key: str, ev: dict[str, Any], patient_id: int,
                status: str, message_id: int | None, *, tombstone: bool = False,
                source: str = "hl7", details: dict[str, Any] | None = None) -> int:
        now = datetime.now(UTC)
        ident = ev.get("id") or {"value": key, "authority": ""}
        values = details if details is not None else details_from_hl7(ev)
        return int(conn.execute(insert(referrals).values(
            key=key, identifier=ident["value"][:255], authority=(ident["authority"] or "")[:255],
            patient_id=patient_id, status=status, tombstone=tombstone, source=source,
            message_id=message_id, created_at=now, updated_at=now,
            closed_at=now if wf.is_closed(status) else None, **values,
        ).returning(referrals.c.id)).scalar_one())

    # -- changes ---------------------------------------------------------------------------

    def _change(self, conn: Connection, row: Any, status: str, actor: str, at: datetime,
                message_id: int | None, detail: dict[str, Any] | None = None) -> int:
        wf.check(row["status"], status)
        now = datetime.now(UTC)
        conn.execute(update(referrals).where(referrals.c.id == row["id"]).values(
            status=status, updated_at=now,
            closed_at=now if wf.is_closed(status) else None))
        hid = self._history(conn, row["id"], row["patient_id"], row["key"], status, status,
                            actor, at, message_id, detail or {})
        if status in wf.WITH_ACCESS and row["status"] not in wf.WITH_ACCESS:
            self._grant(conn, row["id"], row["patient_id"], row["structure_id"])
        if wf.is_closed(status):
            self._end_grants(conn, row["id"], now)
        return hid

    def _history(self, conn: Connection, referral_id: int, patient_id: int, key: str,
                 action: str, status: str, actor: str, at: datetime,
                 message_id: int | None, detail: dict[str, Any]) -> int:
        hid = int(conn.execute(insert(referral_history).values(
            referral_id=referral_id, at=at, action=action, status=status, actor=actor[:255],
            detail=_dumps(detail), message_id=message_id,
        ).returning(referral_history.c.id)).scalar_one())
        now = datetime.now(UTC)
        title = wf.TITLES.get(action, f"Support request: {action}")
        conn.execute(insert(timeline_events).values(
            patient_id=survivor(conn, patient_id), type="referral", key=f"{key}#{hid}"[:512],
            status="active", at=at, title=f"{title} ({actor})"[:512], code=status,
            data=_dumps({"referral_id": referral_id, "action": action, "status": status,
                         "actor": actor, **{k: v for k, v in detail.items()
                                            if k in ("reason", "note", "coordinator")}}),
            message_id=message_id or 0, last_message_id=message_id or 0,
            created_at=now, updated_at=now))
        return hid

    def _grant(self, conn: Connection, referral_id: int, patient_id: int,
               structure_id: str | None) -> None:
        """The structure joins the care circle: one grant per coordinator, named after the
        request so its end finds exactly these."""
        if not structure_id:
            return
        now = datetime.now(UTC)
        members = conn.execute(select(users.c.id, users.c.professional_id).join(
            structure_members, structure_members.c.user_id == users.c.id).where(
            structure_members.c.structure_id == structure_id)).all()
        for uid, professional_id in members:
            conn.execute(insert(care_circle).values(
                patient_id=survivor(conn, patient_id), professional_id=professional_id,
                user_id=uid, source="grant", role="support structure", first_at=now,
                last_at=now, granted_by=f"referral:{referral_id}"))

    def _end_grants(self, conn: Connection, referral_id: int, now: datetime) -> None:
        until = now + timedelta(days=self.settings.grace_days)
        conn.execute(update(care_circle).where(
            care_circle.c.granted_by == f"referral:{referral_id}",
            care_circle.c.revoked_at.is_(None),
            or_(care_circle.c.until.is_(None), care_circle.c.until > until)).values(until=until))

    def act(self, who: Principal, referral_id: int, action: str, *, reason: str | None = None,
            note: str | None = None, coordinator: str | None = None,
            structure_id: str | None = None, remote: str | None = None) -> dict[str, Any]:
        """A coordinator's (or the requester's) action on a request, in its own transaction,
        audited; see `act_on`."""
        with self.db.begin() as conn:
            patient_id, wake = self.act_on(conn, who, referral_id, action, reason=reason,
                                           note=note, coordinator=coordinator,
                                           structure_id=structure_id)
        self.wake(wake)
        audit.record(self.db, who, f"referral_{action}", patient_ids=[patient_id],
                     remote=remote, detail={"referral": referral_id})
        with self.db.connect() as conn:  # what the action made of it (a transfer may take
            row = conn.execute(select(referrals).where(  # it out of the actor's sight)
                referrals.c.id == referral_id)).mappings().one()
            return self._detail(conn, row)

    def wake(self, partition: int | None) -> None:
        """After the commit: the partition whose outbox got an RRI runs a pass."""
        if partition is not None and self.replies is not None and \
                self.replies.notify is not None:
            self.replies.notify(partition)

    def act_on(self, conn: Connection, who: Principal, referral_id: int, action: str, *,
               reason: str | None = None, note: str | None = None,
               coordinator: str | None = None, structure_id: str | None = None
               ) -> tuple[int, int | None]:
        """One action on `conn` (the caller's transaction): a status (`accepted`, `rejected`,
        `in-progress`, `on-hold`, `completed`, `cancelled`, …), `assign`, `note`,
        `evaluation` or `transfer` (hand on to another structure). Returns the patient and
        the partition to wake once committed (an RRI^I12 was queued), if any."""
        now = datetime.now(UTC)
        wake: int | None = None
        row = self._visible(conn, who, referral_id)
        actor = who.username
        if action in wf.TRANSITIONS:
            if action == wf.REJECTED and not (reason or "").strip():
                raise wf.TransitionError("declining a request needs a reason")
            hid = self._change(conn, row, action, actor, now, None,
                               {"reason": reason} if reason else None)
            if self.replies is not None and action != row["status"]:
                wake = self.replies.queue(conn, row, hid, action)
        elif action == "assign":
            if not coordinator:
                raise ValueError("assign needs a coordinator")
            conn.execute(update(referrals).where(referrals.c.id == row["id"]).values(
                coordinator=coordinator[:128], updated_at=now))
            self._history(conn, row["id"], row["patient_id"], row["key"], "assigned",
                          row["status"], actor, now, None, {"coordinator": coordinator})
        elif action in ("note", "evaluation"):
            if not (note or "").strip():
                raise ValueError(f"{action} needs a text")
            if wf.is_closed(row["status"]) and action == "evaluation":
                raise wf.TransitionError("the request is closed: no evaluation any more")
            self._history(conn, row["id"], row["patient_id"], row["key"], action,
                          row["status"], actor, now, None, {"note": note})
        elif action == "transfer":
            if wf.is_closed(row["status"]) or not structure_id:
                raise wf.TransitionError("only an open request can be handed on, to a "
                                         "named structure")
            if conn.execute(select(support_structures.c.id).where(
                    support_structures.c.id == structure_id)).first() is None:
                raise ValueError(f"no support structure {structure_id!r}")
            self._end_grants(conn, row["id"], now)
            conn.execute(update(referrals).where(referrals.c.id == row["id"]).values(
                structure_id=structure_id, status=wf.REQUESTED, coordinator=None,
                updated_at=now))
            self._history(conn, row["id"], row["patient_id"], row["key"], "transferred",
                          wf.REQUESTED, actor, now, None,
                          {"reason": f"to {structure_id}" + (f": {reason}" if reason
                                                              else "")})
        else:
            raise ValueError(f"unknown action {action!r}")
        return int(row["patient_id"]), wake

    # -- reads -----------------------------------------------------------------------------

    def _visible(self, conn: Connection, who: Principal, referral_id: int) -> Any:
        row = conn.execute(select(referrals).where(referrals.c.id == referral_id)
                           ).mappings().first()
        if row is None or row["tombstone"]:
            raise NotFound(referral_id)
        mine = self._member_structures(conn, who)
        if mine is None or row["structure_id"] in mine:
            return row
        requester = json.loads(row["requester"] or "null") or {}
        if who.professional_id and requester.get("professional_id") == who.professional_id:
            return row  # the requester follows its own request (and may cancel it)
        raise NotFound(referral_id)

    def read(self, who: Principal, referral_id: int, remote: str | None = None
             ) -> dict[str, Any]:
        try:
            with self.db.connect() as conn:
                out = self._detail(conn, self._visible(conn, who, referral_id))
        except NotFound:
            audit.record(self.db, who, "referral_read", patient_ids=None, remote=remote,
                         outcome="denied", detail={"referral": referral_id})
            raise
        audit.record(self.db, who, "referral_read", patient_ids=[out["patient_id"]],
                     remote=remote, detail={"referral": referral_id})
        return out

    def _detail(self, conn: Connection, row: Any) -> dict[str, Any]:
        out = self._summary(conn, row)
        out["history"] = [{**dict(h), "at": _iso(h["at"]),
                           "detail": json.loads(h["detail"] or "{}")} for h in conn.execute(
            select(referral_history).where(referral_history.c.referral_id == row["id"])
            .order_by(referral_history.c.id)).mappings()]
        return out

    def _summary(self, conn: Connection, row: Any) -> dict[str, Any]:
        names = dict(conn.execute(select(support_structures.c.id, support_structures.c.name)
                                  ).all())
        out = {k: _iso(row[k]) for k in row.keys()}
        for k in ("requester", "performer", "data"):
            out[k] = json.loads(row[k] or "null")
        out["structure_name"] = names.get(row["structure_id"] or "")
        out["service_request_status"] = wf.SERVICE_REQUEST_STATUS[row["status"]]
        out["rf1_status"] = wf.RF1_STATUS[row["status"]]
        out["patient_id"] = survivor(conn, row["patient_id"])
        return out

    def worklist(self, who: Principal, *, status: str | None = None,
                 requester: str | None = None, structure_id: str | None = None,
                 include_closed: bool = False, remote: str | None = None,
                 limit: int = 500) -> list[dict[str, Any]]:
        """Open requests of the user's structures, oldest and most urgent first."""
        with self.db.connect() as conn:
            mine = self._member_structures(conn, who)
            q = select(referrals).where(referrals.c.tombstone.is_(False))
            if mine is not None:
                q = q.where(referrals.c.structure_id.in_(sorted(mine) or [""]))
            if structure_id:
                q = q.where(referrals.c.structure_id == structure_id)
            if status:
                q = q.where(referrals.c.status == status)
            elif not include_closed:
                q = q.where(referrals.c.status.in_(sorted(wf.OPEN)))
            rows = list(conn.execute(q.order_by(referrals.c.authored_at, referrals.c.id)
                                     .limit(limit)).mappings())
            out = [self._summary(conn, r) for r in rows]
        if requester:
            needle = requester.lower()
            out = [r for r in out if needle in _dumps(r["requester"] or {}).lower()]
        rank = {"stat": 0, "asap": 1, "urgent": 1, "routine": 2}
        out.sort(key=lambda r: (rank.get(r["priority"] or "", 3), r["authored_at"] or ""))
        audit.record(self.db, who, "referral_worklist",
                     patient_ids=sorted({r["patient_id"] for r in out}) or None, remote=remote,
                     detail={"count": len(out)})
        return out

    def for_patient(self, patient_id: int) -> list[dict[str, Any]]:
        """A patient's requests, for a page whose reader the timeline already checked and
        audited (the patient page)."""
        from engine.timeline.models import patients

        with self.db.connect() as conn:
            ids = [patient_id, *conn.execute(select(patients.c.id).where(
                patients.c.merged_into == patient_id)).scalars()]
            rows = list(conn.execute(select(referrals).where(
                referrals.c.patient_id.in_(ids), referrals.c.tombstone.is_(False))
                .order_by(referrals.c.id.desc())).mappings())
            return [self._summary(conn, r) for r in rows]

    def by_key(self, key: str) -> int | None:
        with self.db.connect() as conn:
            return conn.execute(select(referrals.c.id).where(referrals.c.key == key)).scalar()

