"""Apply an events envelope to the timeline, idempotently, in one transaction.

Idempotency (design brief: at-least-once delivery, exactly-once effect): each event is keyed
by (message id, event type, event key) in `applied_events`, with the delivery generation that
applied it. The same generation again (a redelivery, a crash between apply and the outbox
update) is skipped, and so is an older one arriving late; a newer generation (an operator's
replay, a reprocess, an accepted mapping) is applied again and replaces what readers see —
brief: "idempotency means the same delivery again has no effect, not that a newer version of
it is ignored". Per-patient order is given by the delivery runner; what arrives out
of order *semantically* (a cancellation before the movement it cancels, a replacement before
its parent) is kept as a tombstone the later message finds.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, insert, or_, select, text, update
from sqlalchemy.engine import Connection

from engine.store.database import _sqlite_value
from engine.timeline import conflicts, identity
from engine.timeline.models import (
    applied_events,
    appointments,
    care_circle,
    consents,
    documents,
    movements,
    observations,
    orders,
    patients,
    stays,
    timeline_events,
)
from engine.timeline.settings import TimelineSettings

IDENTITY_LOCK_SPACE = 0x544C  # "TL": advisory lock space of the timeline's identities

MOVEMENT_TITLES = {
    "A01": "Admission", "A02": "Transfer", "A03": "Discharge", "A04": "Registration",
    "A05": "Pre-admission", "A06": "Change outpatient to inpatient",
    "A07": "Change inpatient to outpatient", "A21": "Leave of absence",
    "A22": "Return from leave of absence", "A14": "Pending admission",
    "A15": "Pending transfer", "A16": "Pending discharge",
    "A54": "Change of attending doctor",
}


def ts(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _observation_values(patient_id: int, o: dict[str, Any], message_id: int
                        ) -> dict[str, Any]:
    original = o.get("original") or {}
    analyte = o.get("analyte") or [None, None]
    value = o.get("value")
    try:
        num = float(value) if value is not None else None
    except ValueError:
        num = None
    return {
        "patient_id": patient_id, "loinc": o.get("loinc"), "component": analyte[0],
        "system": analyte[1], "display": (o.get("display") or "")[:512],
        "outcome": o.get("outcome"), "value": value, "value_num": num,
        "value_text": o.get("value_text"), "comparator": o.get("comparator"),
        "unit": o.get("unit"), "reference_low": o.get("reference_low"),
        "reference_high": o.get("reference_high"), "abnormal_flag": o.get("abnormal_flag"),
        "status": o.get("status"), "performing_lab": o.get("performing_lab"),
        "observed_at": ts(o.get("at")), "original_code": original.get("code"),
        "original_system": original.get("coding_system"),
        "original_value": (original.get("value") or "")[:255],
        "original_unit": original.get("unit"), "message_id": message_id,
    }


def _insert_rows(conn: Connection, table: str, rows: list[dict[str, Any]]) -> None:
    """Rows of one shape straight to the driver's executemany: SQLAlchemy's per-row bind
    processing costs more than SQLite's insert of the row. Datetimes are written as the
    store's other raw inserts write them (naive UTC text on SQLite, engine/store/database.py)."""
    columns = list(rows[0])
    sqlite = conn.dialect.name == "sqlite"
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" if sqlite else "%s" for _ in columns)
    sql = f"INSERT INTO {table} ({names}) VALUES ({marks})"
    if sqlite:
        params = [tuple(_sqlite_value(r[c]) for c in columns) for r in rows]
    else:
        params = [tuple(r[c] for c in columns) for r in rows]
    conn.exec_driver_sql(sql, params)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)


def _once(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The envelope's events with exact repeats left out, in order.

    A sender may repeat a group within one message (an ORU carrying the same OBR group twice
    is a real third-party sample): the second copy says nothing new, and recording it twice
    in `applied_events` broke its primary key on every try. Events that share a key but
    differ are all kept and applied in order — each handler upserts by key, so the later
    one completes or corrects the earlier, as a later message would.
    """
    if all(isinstance(ev, dict) and isinstance(ev.get("key"), str) for ev in events) and len(
            {(ev.get("type"), ev["key"]) for ev in events}) == len(events):
        return list(events)  # no two share a key: no repeat to look for (the usual case)
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for ev in events:
        fingerprint = _dumps(ev)
        if fingerprint not in seen:
            seen.add(fingerprint)
            out.append(ev)
    return out


# The statements every envelope runs, built once (composing one through SQLAlchemy Core
# costs more than executing it); the parameters go in as dictionaries.
_APPLIED = select(applied_events.c.generation).where(
    applied_events.c.message_id == bindparam("message_id"),
    applied_events.c.event_type == bindparam("event_type"),
    applied_events.c.event_key == bindparam("event_key"))
_MARK_APPLIED = insert(applied_events)
_EVENT_ID = select(timeline_events.c.id).where(
    timeline_events.c.type == bindparam("type"), timeline_events.c.key == bindparam("key"))
_NEW_EVENT = insert(timeline_events).returning(timeline_events.c.id)
_EVENT_OBSERVATIONS = select(
    observations.c.key, observations.c.id, observations.c.message_id, observations.c.deleted,
    observations.c.status).where(observations.c.event_id == bindparam("event_id"))

# Event types of other domains (issue #14's referrals), applied in the same transaction and
# with the same idempotency as the timeline's own: type → handler(conn, patient_id, event,
# message_id, received).
EXTENSIONS: dict[str, Callable[[Connection, int, dict[str, Any], int, datetime], None]] = {}


def register_event_type(
        name: str, handler: Callable[[Connection, int, dict[str, Any], int, datetime], None]
) -> None:
    EXTENSIONS[name] = handler


class Applier:
    def __init__(self, settings: TimelineSettings) -> None:
        self.settings = settings

    # -- entry point ----------------------------------------------------------------------

    def apply(self, conn: Connection, env: dict[str, Any], generation: int = 0
              ) -> dict[str, int]:
        """Apply one envelope of delivery ``generation``; returns counts (applied, skipped).
        Raises on bad input."""
        if env.get("format") != "parcours.events":
            raise ValueError("payload is not a parcours events envelope")
        message_id = int(env["message_id"])
        events: list[dict[str, Any]] = env.get("events") or []
        unique = _once(events)
        seen = {id(e): self._applied(conn, message_id, e) for e in unique}
        todo = [e for e in unique if seen[id(e)] is None or seen[id(e)] < generation]
        if not todo or env.get("patient") is None:
            return {"applied": 0, "skipped": len(events)}
        block = env["patient"]
        received = ts((env.get("source") or {}).get("received_at")) or datetime.now(UTC)
        self._serialise_identities(conn, block, todo)
        for ev in {(ev["type"], ev["key"][:512]): ev for ev in todo}.values():
            if seen[id(ev)] is None:
                conn.execute(_MARK_APPLIED, {
                    "message_id": message_id, "event_type": ev["type"],
                    "event_key": ev["key"][:512], "applied_at": datetime.now(UTC),
                    "generation": generation})
            else:
                conn.execute(update(applied_events).where(
                    applied_events.c.message_id == message_id,
                    applied_events.c.event_type == ev["type"],
                    applied_events.c.event_key == ev["key"][:512]).values(
                    applied_at=datetime.now(UTC), generation=generation))
        for ev in todo:  # A47 renames before the patient is looked up by its new id
            if ev["type"] == "change_identifier":
                identity.change_identifier(conn, block, ev["absorbed"], message_id)
        holders = identity.Lookups(conn)
        found = identity.vigilance(conn, block, message_id, holders)
        if found:  # identity vigilance: held for an operator, applied to nobody meanwhile
            self._hold(conn, env, todo, found, message_id)
            return {"applied": 0, "held": len(todo), "skipped": len(events) - len(todo)}
        patient_id = identity.resolve(conn, block, message_id, holders)
        self._run(conn, patient_id, todo, message_id, received)
        return {"applied": len(todo), "skipped": len(events) - len(todo)}

    def _run(self, conn: Connection, patient_id: int, todo: list[dict[str, Any]],
             message_id: int, received: datetime) -> None:
        for ev in todo:
            handler = getattr(self, f"_{ev['type']}", None) or EXTENSIONS.get(ev["type"])
            if handler is None:
                raise ValueError(f"unknown event type {ev['type']!r}")
            handler(conn, patient_id, ev, message_id, received)

    @staticmethod
    def _hold(conn: Connection, env: dict[str, Any], todo: list[dict[str, Any]],
              found: list[dict[str, Any]], message_id: int) -> None:
        """One held conflict per message, with every contradiction found as evidence; the
        events wait in it (the applied_events rows are written: a redelivery holds nothing
        twice)."""
        first = found[0]
        evidence = {**first["evidence"], "kinds": [c["kind"] for c in found]}
        conflicts.record(conn, first["kind"], message_id=message_id, evidence=evidence,
                         fingerprint=f"message:{message_id}", patient_id=first["patient_id"],
                         other_message_id=first["other_message_id"],
                         envelope={**env, "events": todo})

    def apply_held(self, conn: Connection, env: dict[str, Any], patient_id: int) -> int:
        """An operator's decision on a held conflict: its events go to `patient_id`, and the
        identity (identifiers, traits, merges) is left as it is — the operator decided whose
        events they are, not whose identity the message describes."""
        message_id = int(env["message_id"])
        received = ts((env.get("source") or {}).get("received_at")) or datetime.now(UTC)
        todo = [e for e in env.get("events") or []
                if e["type"] not in ("merge", "change_identifier", "demographics")]
        self._run(conn, identity.survivor(conn, patient_id), todo, message_id, received)
        return len(todo)

    @staticmethod
    def _serialise_identities(conn: Connection, block: dict[str, Any],
                              events: list[dict[str, Any]]) -> None:
        """Two messages of one person can sit in different partitions (an ADT keyed by its
        local id, an ORU carrying only the INS) and be applied at the same time; both would
        find nobody and create two patients. Envelopes sharing an identifier are therefore
        serialised: PostgreSQL transaction advisory locks, one per identifier (taken in
        sorted order, so no deadlock); SQLite has one writer, taken here by the first write
        (`applied_events` is written before any lookup)."""
        if conn.dialect.name != "postgresql":
            return
        idents = list(block.get("identifiers") or [])
        for ev in events:
            idents += ev.get("absorbed") or []
        keys = sorted({zlib.crc32(f"{i['authority']}|{i['value']}".encode()) - 2**31
                       for i in idents})
        for k in keys:
            conn.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"),
                         {"space": IDENTITY_LOCK_SPACE, "key": k})

    def _applied(self, conn: Connection, message_id: int, ev: dict[str, Any]) -> int | None:
        """The generation that applied this event of this message, None if none did."""
        found = conn.execute(_APPLIED, {"message_id": message_id, "event_type": ev["type"],
                                        "event_key": ev["key"][:512]}).scalar()
        return None if found is None else int(found)

    # -- generic timeline event row -------------------------------------------------------

    def _event_row(self, conn: Connection, patient_id: int, type_: str, key: str,
                   message_id: int, **values: Any) -> int:
        return self._upsert_event(conn, patient_id, type_, key, message_id, **values)[0]

    @staticmethod
    def _upsert_event(conn: Connection, patient_id: int, type_: str, key: str,
                      message_id: int, **values: Any) -> tuple[int, bool]:
        """The event's id, and whether it is new (a new event has nothing under it yet)."""
        now = datetime.now(UTC)
        row = conn.execute(_EVENT_ID, {"type": type_, "key": key[:512]}).scalar()
        if row is None:
            values.setdefault("status", "active")
            return int(conn.execute(_NEW_EVENT, {
                "patient_id": patient_id, "type": type_, "key": key[:512],
                "message_id": message_id, "last_message_id": message_id, "created_at": now,
                "updated_at": now, **values}).scalar_one()), True
        conn.execute(update(timeline_events).where(timeline_events.c.id == row).values(
            patient_id=patient_id, last_message_id=message_id, updated_at=now, **values))
        return int(row), False

    # -- identity events ------------------------------------------------------------------

    def _merge(self, conn: Connection, patient_id: int, ev: dict[str, Any], message_id: int,
               received: datetime) -> None:
        identity.apply_merge(conn, patient_id, ev["absorbed"], message_id)

    def _change_identifier(self, conn: Connection, patient_id: int, ev: dict[str, Any],
                           message_id: int, received: datetime) -> None:
        """Done before `resolve` (see apply); nothing left to do for the patient."""

    def _demographics(self, conn: Connection, patient_id: int, ev: dict[str, Any],
                      message_id: int, received: datetime) -> None:
        identity.history(conn, patient_id, f"update_{ev['key']}", message_id)

    def _care_team(self, conn: Connection, patient_id: int, ev: dict[str, Any],
                   message_id: int, received: datetime) -> None:
        """ROL people (a médecin traitant, a referring doctor) join the care circle like the
        PV1 doctors of a movement."""
        self._name_doctors(conn, patient_id, ev, message_id, received)

    def _consent(self, conn: Connection, patient_id: int, ev: dict[str, Any], message_id: int,
                 received: datetime) -> None:
        """ZFA: the latest collected consent wins on the patient; every one is kept."""
        at = ts(ev.get("at")) or received
        conn.execute(insert(consents).values(
            patient_id=patient_id, at=at, message_id=message_id,
            dmp_status=ev.get("dmp_status"), feeding_opposition=ev.get("feeding_opposition"),
            consultation_consent=ev.get("consultation_consent"), data=_dumps(ev)))
        current = conn.execute(select(patients.c.consent_at)
                               .where(patients.c.id == patient_id)).scalar()
        if current is None or _aware(current) <= at:
            conn.execute(update(patients).where(patients.c.id == patient_id).values(
                dmp_status=ev.get("dmp_status"),
                dmp_feeding_opposition=ev.get("feeding_opposition"),
                dmp_consultation_consent=ev.get("consultation_consent"), consent_at=at))

    # -- movements and stays --------------------------------------------------------------

    def _stay_key(self, patient_id: int, ev: dict[str, Any]) -> str:
        visit = ev.get("visit_number")
        return f"{ev.get('facility') or ''}|{visit}" if visit else \
            f"{ev.get('facility') or ''}|patient:{patient_id}"

    def _stay(self, conn: Connection, patient_id: int, ev: dict[str, Any]) -> int:
        key = self._stay_key(patient_id, ev)
        row = conn.execute(select(stays.c.id).where(stays.c.key == key)).scalar()
        if row is not None:
            conn.execute(update(stays).where(stays.c.id == row).values(patient_id=patient_id))
            return int(row)
        return int(conn.execute(insert(stays).values(
            patient_id=patient_id, key=key, facility=ev.get("facility"),
            visit_number=ev.get("visit_number"), status="planned").returning(stays.c.id)
        ).scalar_one())

    @staticmethod
    def _fields(ev: dict[str, Any]) -> dict[str, Any]:
        loc = ev.get("location") or {}
        med, nurse = ev.get("medical_ward") or {}, ev.get("nursing_ward") or {}
        return {
            "at": ts(ev.get("at")), "patient_class": ev.get("patient_class") or None,
            "location": "/".join(x for x in (loc.get("point_of_care"), loc.get("room"),
                                             loc.get("bed")) if x) or None,
            "medical_ward": med.get("name") or med.get("id") or None,
            "nursing_ward": nurse.get("name") or nurse.get("id") or None,
        }

    def _movement(self, conn: Connection, patient_id: int, ev: dict[str, Any],
                  message_id: int, received: datetime) -> None:
        stay_id = self._stay(conn, patient_id, ev)
        action = ev["action"]
        fields = self._fields(ev)
        data = {k: ev.get(k) for k in ("location", "medical_ward", "nursing_ward", "doctors",
                                       "movement_id", "historic", "message_trigger")}
        row = conn.execute(select(movements).where(movements.c.key == ev["key"][:512])
                           ).mappings().first()
        if action == "cancel":
            self._cancel_movement(conn, patient_id, stay_id, ev, row, fields, data, message_id)
        elif row is None:
            status = "active"
            if action == "insert" and self._consume_pending(conn, stay_id, ev["trigger"]):
                status = "cancelled"
            conn.execute(insert(movements).values(
                patient_id=patient_id, stay_id=stay_id, key=ev["key"][:512],
                trigger=ev["trigger"], status=status, data=_dumps(data),
                message_id=message_id, last_message_id=message_id, **fields))
        elif action == "update":  # `""` (HL7 v2.5.1 §2.5.3) clears what an earlier one set
            cleared = {k: None for k in ev.get("cleared") or () if k in fields}
            conn.execute(update(movements).where(movements.c.id == row["id"]).values(
                **{k: v for k, v in fields.items() if v is not None}, **cleared,
                data=_dumps(data),
                last_message_id=message_id, patient_id=patient_id))
        else:  # insert of a movement already known (an update or a cancel came first)
            conn.execute(update(movements).where(movements.c.id == row["id"]).values(
                **{k: v for k, v in fields.items() if row[k] is None and v is not None},
                trigger=row["trigger"] or ev["trigger"], patient_id=patient_id,
                last_message_id=message_id))
        if action != "cancel":
            self._name_doctors(conn, patient_id, ev, message_id, received)
        self._refresh_movement_events(conn, patient_id, stay_id, message_id)

    def _cancel_movement(self, conn: Connection, patient_id: int, stay_id: int,
                         ev: dict[str, Any], row: Any, fields: dict[str, Any],
                         data: dict[str, Any], message_id: int) -> None:
        if ev.get("by_key"):  # ZBE-1 names the movement cancelled
            if row is not None:
                conn.execute(update(movements).where(movements.c.id == row["id"]).values(
                    status="cancelled", last_message_id=message_id))
            else:  # the cancellation came first: a tombstone the insert will find
                conn.execute(insert(movements).values(
                    patient_id=patient_id, stay_id=stay_id, key=ev["key"][:512],
                    trigger=ev["trigger"], status="cancelled", data=_dumps(data),
                    message_id=message_id, last_message_id=message_id, **fields))
            return
        target = conn.execute(select(movements.c.id).where(
            movements.c.stay_id == stay_id, movements.c.status == "active",
            movements.c.trigger.in_(ev["cancels"]))
            .order_by(movements.c.at.desc(), movements.c.id.desc())).scalar()
        if target is not None:
            conn.execute(update(movements).where(movements.c.id == target).values(
                status="cancelled", last_message_id=message_id))
            return
        conn.execute(insert(movements).values(
            patient_id=patient_id, stay_id=stay_id, key=f"pending|{message_id}|{ev['key']}"[:512],
            trigger=None, cancels=",".join(ev["cancels"]), status="pending_cancel",
            data=_dumps(data), message_id=message_id, last_message_id=message_id, **fields))

    def _consume_pending(self, conn: Connection, stay_id: int, trigger: str) -> bool:
        for pid, cancels in conn.execute(select(movements.c.id, movements.c.cancels).where(
                movements.c.stay_id == stay_id, movements.c.status == "pending_cancel")
                .order_by(movements.c.id)):
            if trigger in (cancels or "").split(","):
                conn.execute(update(movements).where(movements.c.id == pid)
                             .values(status="used"))
                return True
        return False

    def _refresh_movement_events(self, conn: Connection, patient_id: int, stay_id: int,
                                 message_id: int) -> None:
        """Recompute the stay from its movements (so any order of arrival gives one answer)
        and mirror the stay and every movement as timeline events."""
        rows = conn.execute(select(movements).where(
            movements.c.stay_id == stay_id, movements.c.status.in_(("active", "cancelled")))
            .order_by(movements.c.at, movements.c.id)).mappings().all()
        stay = conn.execute(select(stays).where(stays.c.id == stay_id)).mappings().one()
        status, admitted, discharged = "planned", None, None
        pclass = location = ward = None
        started = False
        for m in rows:
            if m["status"] != "active":
                continue
            t = m["trigger"]
            if t in ("A01", "A04"):
                status, admitted, discharged, started = "active", m["at"], None, True
            elif t == "A05" and not started:
                status = "planned"
            elif t == "A03":
                status, discharged = "discharged", m["at"]
            elif t == "A21":
                status = "on_leave"
            elif t == "A22" and status == "on_leave":
                status = "active"
            pclass = m["patient_class"] or pclass
            location = m["location"] or location
            ward = m["medical_ward"] or ward
        if not any(m["status"] == "active" and m["trigger"] in ("A01", "A04", "A05")
                   for m in rows):
            status = "cancelled" if rows else status
            if any(m["status"] == "active" for m in rows) and status == "cancelled":
                status = "unknown_start"  # a transfer or a discharge without its admission
        first_at = next((m["at"] for m in rows if m["status"] == "active"), None)
        values = {"status": status, "admitted_at": admitted, "discharged_at": discharged,
                  "patient_class": pclass, "location": location, "medical_ward": ward}
        title = f"Stay at {stay['facility'] or 'facility'}"
        event_id = self._event_row(
            conn, patient_id, "stay", stay["key"], message_id,
            status="cancelled" if status == "cancelled" else "active",
            at=admitted or first_at, title=title, code=status,
            data=_dumps({**values, "facility": stay["facility"],
                         "visit_number": stay["visit_number"], "stay_status": status}))
        conn.execute(update(stays).where(stays.c.id == stay_id).values(
            **values, event_id=event_id, patient_id=patient_id))
        for m in rows:
            data = json.loads(m["data"] or "{}")
            mid = self._event_row(
                conn, patient_id, "movement", m["key"], m["last_message_id"],
                status=m["status"], at=m["at"], code=m["trigger"],
                title=MOVEMENT_TITLES.get(m["trigger"] or "", m["trigger"] or "Movement"),
                data=_dumps({"trigger": m["trigger"], "patient_class": m["patient_class"],
                             "location": m["location"], "medical_ward": m["medical_ward"],
                             "nursing_ward": m["nursing_ward"], "stay_event_id": event_id,
                             "doctors": data.get("doctors") or {}}))
            conn.execute(update(movements).where(movements.c.id == m["id"])
                         .values(event_id=mid))

    def _name_doctors(self, conn: Connection, patient_id: int, ev: dict[str, Any],
                      message_id: int, received: datetime) -> None:
        """PV1-7/8/9/17 doctors join the care circle from the time the platform learns it."""
        for role, people in (ev.get("doctors") or {}).items():
            for p in people:
                if not p.get("id"):
                    continue
                row = conn.execute(select(care_circle.c.id, care_circle.c.last_at).where(
                    care_circle.c.patient_id == patient_id, care_circle.c.source == "adt",
                    care_circle.c.professional_id == p["id"])).first()
                if row is None:
                    conn.execute(insert(care_circle).values(
                        patient_id=patient_id, professional_id=p["id"], source="adt",
                        role=role, first_at=received, last_at=received,
                        message_id=message_id))
                elif _aware(row.last_at) < received:
                    conn.execute(update(care_circle).where(care_circle.c.id == row.id).values(
                        last_at=received, role=role, message_id=message_id))

    # -- results --------------------------------------------------------------------------

    def _result(self, conn: Connection, patient_id: int, ev: dict[str, Any], message_id: int,
                received: datetime) -> None:
        code = ev.get("code") or {}
        deleted = ev["action"] == "delete"
        event_id, new = self._upsert_event(
            conn, patient_id, "result", ev["key"], message_id,
            status="deleted" if deleted else "active", at=ts(ev.get("at")),
            title=code.get("text") or code.get("code") or "Result", code=code.get("code"),
            data=_dumps({k: ev.get(k) for k in ("code", "placer", "filler", "status",
                                                "ordering_provider")}))
        self._observations(conn, patient_id, event_id, ev.get("observations") or [],
                           message_id, deleted, new)

    def _observations(self, conn: Connection, patient_id: int, event_id: int,
                      obs: list[dict[str, Any]], message_id: int, deleted: bool,
                      new_event: bool = False) -> None:
        """Set-based: one SELECT of the event's observations, then one multi-row INSERT and
        one executemany UPDATE, whatever the number of OBX (a statement through SQLAlchemy
        Core costs far more than a row). An OBX key sent twice in one message: the last wins."""
        if not obs:
            return
        rows = [] if new_event else conn.execute(_EVENT_OBSERVATIONS,
                                                 {"event_id": event_id}).all()
        existing = {r.key: r.id for r in rows}
        latest: dict[str, dict[str, Any]] = {}
        for o in obs:
            latest[o["key"][:512]] = o
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        withdrawn: list[dict[str, Any]] = []
        for key, o in latest.items():
            row = existing.get(key)
            if o.get("action") == "delete" or deleted:  # OBX-11 D (table 0085): withdrawn
                if row is not None:
                    withdrawn.append({"b_id": row, "b_status": o.get("status") or "D"})
                continue
            values = _observation_values(patient_id, o, message_id)
            if row is None:
                inserts.append({"event_id": event_id, "key": key, "deleted": False, **values})
            else:  # OBX-11 C corrects; a resent F replaces what was sent before as well
                updates.append({"b_id": row, "b_deleted": False,
                                **{f"b_{k}": v for k, v in values.items()}})
        # A newer generation of the same message (a replay, an accepted mapping) that no
        # longer carries an observation this message wrote withdraws it: readers see what the
        # newest generation says, not a leftover of the previous one.
        withdrawn += [{"b_id": r.id, "b_status": r.status} for r in rows
                      if r.message_id == message_id and not r.deleted and r.key not in latest]
        if inserts:
            _insert_rows(conn, "observations", inserts)
        if updates:
            shape = [k[2:] for k in updates[0] if k != "b_id"]
            conn.execute(update(observations).where(observations.c.id == bindparam("b_id"))
                         .values({k: bindparam(f"b_{k}") for k in shape}), updates)
        if withdrawn:
            conn.execute(update(observations).where(observations.c.id == bindparam("b_id"))
                         .values(deleted=True, status=bindparam("b_status")), withdrawn)

    # -- documents ------------------------------------------------------------------------

    @staticmethod
    def _doc_source(ev: dict[str, Any]) -> str:
        """Who issued the document: the custodian (CDA R2 §4.2.2.3, the organisation in
        charge of it), else the sending facility the transformer put in `source`."""
        return str(ev.get("source") or (ev.get("header") or {}).get("custodian") or "")[:255]

    def _document(self, conn: Connection, patient_id: int, ev: dict[str, Any],
                  message_id: int, received: datetime) -> None:
        """A document is (source, id, patient): the same id from another source, or for
        another patient, is another document — it never moves a filed one (issue #15)."""
        head = ev["header"]
        masking = ev.get("masking") or {}
        flags = {"masked_ps": bool(masking.get("MASQUE_PS")),
                 "invisible_patient": bool(masking.get("INVISIBLE_PATIENT")),
                 "invisible_legal": bool(masking.get("INVISIBLE_REPRESENTANTS_LEGAUX"))}
        author = head.get("author") or {}
        doc_id = head["document_id"]
        source = self._doc_source(ev)
        existing = conn.execute(select(documents.c.id, documents.c.status,
                                       documents.c.event_id).where(
            documents.c.source == source, documents.c.document_id == doc_id,
            documents.c.patient_id == patient_id).order_by(documents.c.id)).first()
        if existing is None:
            self._document_elsewhere(conn, patient_id, source, doc_id, ev, message_id)
        if ev["action"] == "delete":
            status = "deleted"
        elif existing is not None and existing.status in ("deleted", "replaced"):
            status = existing.status  # a tombstone from a message that came first
        else:
            status = "active"
        key = f"{source}|{doc_id}|{patient_id}"
        if existing is not None and existing.event_id is not None:  # keyed when first filed
            key = conn.execute(select(timeline_events.c.key).where(
                timeline_events.c.id == existing.event_id)).scalar() or key
        event_id = self._event_row(
            conn, patient_id, "document", key, message_id,
            status=status, at=ts(head.get("effective_time")),
            title=(head.get("title") or "Document")[:512], code=head.get("type_code"),
            confidentiality=head.get("confidentiality"), author_id=author.get("id") or None,
            data=_dumps({"type_code": head.get("type_code"), "title": head.get("title"),
                         "author": author, "custodian": head.get("custodian"),
                         "source": source, "document_id": doc_id,
                         "confidentiality": head.get("confidentiality"),
                         "set_id": head.get("set_id"), "version": head.get("version"),
                         "parent_id": head.get("parent_id"), "masking": masking}),
            **flags)
        values = {
            "patient_id": patient_id, "event_id": event_id, "set_id": head.get("set_id"),
            "version": head.get("version"), "parent_id": head.get("parent_id"),
            "type_code": head.get("type_code"), "title": (head.get("title") or "")[:512],
            "effective_time": ts(head.get("effective_time")),
            "confidentiality": head.get("confidentiality"),
            "author_id": author.get("id") or None, "status": status,
            "content": base64.b64decode(ev["content_b64"]),
            "content_type": ev.get("content_type") or "application/xml",
            "message_id": message_id, **flags,
        }
        if existing is None:
            conn.execute(insert(documents).values(document_id=doc_id, source=source,
                                                  **values))
        else:
            conn.execute(update(documents).where(documents.c.id == existing.id).values(**values))
        if ev["action"] == "replace" or head.get("relation") == "RPLC":
            self._supersede(conn, patient_id, source, head, message_id)

    def _document_elsewhere(self, conn: Connection, patient_id: int, source: str,
                            doc_id: str, ev: dict[str, Any], message_id: int) -> None:
        """A document first filed here whose id the same source already used for another
        patient: filed anyway (nothing is lost), and shown to the operator — one of the two
        was probably sent on the wrong patient. A deletion naming only a document filed
        elsewhere deletes nothing there."""
        others = conn.execute(select(documents.c.patient_id, documents.c.source,
                                     documents.c.message_id).where(
            documents.c.document_id == doc_id,
            or_(documents.c.source != source, documents.c.patient_id != patient_id))
            .order_by(documents.c.id)).all()
        if ev["action"] == "delete" and others:
            o = others[0]
            conflicts.record(
                conn, "document_delete_other", message_id=message_id, patient_id=patient_id,
                other_patient_id=o.patient_id, other_message_id=o.message_id,
                fingerprint=f"{source}|{doc_id}|{patient_id}",
                evidence={"document_id": doc_id, "source": source,
                          "filed_for": [{"patient_id": r.patient_id, "source": r.source,
                                         "message_id": r.message_id} for r in others]})
            return
        same_source = [r for r in others if r.source == source]
        if same_source:
            o = same_source[0]
            conflicts.record(
                conn, "document_id_other_patient", message_id=message_id,
                patient_id=patient_id, other_patient_id=o.patient_id,
                other_message_id=o.message_id, fingerprint=f"{source}|{doc_id}|{patient_id}",
                evidence={"document_id": doc_id, "source": source,
                          "filed_for": [{"patient_id": r.patient_id, "source": r.source,
                                         "message_id": r.message_id} for r in same_source]})

    def _supersede(self, conn: Connection, patient_id: int, source: str,
                   head: dict[str, Any], message_id: int) -> None:
        """CDA R2 §4.2.3.1: RPLC — the parent document (and older versions of the set) are
        replaced; the replacement is a new version of the parent, so it comes from the same
        source for the same patient. A parent or set found only for another patient or
        source is left as it is and the claim is a conflict for the operator. An unknown
        parent gets a tombstone, so its late arrival stays replaced."""
        parent = head.get("parent_id")
        conds = []
        if parent:
            conds.append(documents.c.document_id == parent)
        if head.get("set_id"):
            conds.append(and_(documents.c.set_id == head["set_id"],
                              documents.c.document_id != head["document_id"]))
        if not conds:
            return
        rows = conn.execute(select(documents.c.id, documents.c.event_id, documents.c.status,
                                   documents.c.document_id, documents.c.patient_id,
                                   documents.c.source, documents.c.message_id)
                            .where(or_(*conds))).all()
        mine = [r for r in rows if r.source == source and r.patient_id == patient_id]
        foreign = [r for r in rows if not (r.source == source and r.patient_id == patient_id)]
        for r in mine:
            if r.status == "active":
                conn.execute(update(documents).where(documents.c.id == r.id)
                             .values(status="replaced"))
                if r.event_id is not None:
                    conn.execute(update(timeline_events).where(
                        timeline_events.c.id == r.event_id).values(status="replaced"))
        if foreign and not (parent and parent in {r.document_id for r in mine}):
            o = foreign[0]
            conflicts.record(
                conn, "document_replace_other", message_id=message_id, patient_id=patient_id,
                other_patient_id=o.patient_id, other_message_id=o.message_id,
                fingerprint=f"{source}|{head['document_id']}|{patient_id}",
                evidence={"document_id": head["document_id"], "source": source,
                          "parent_id": parent, "set_id": head.get("set_id"),
                          "claimed": [{"document_id": r.document_id, "patient_id":
                                       r.patient_id, "source": r.source,
                                       "message_id": r.message_id, "status": r.status}
                                      for r in foreign]})
        if parent and parent not in {r.document_id for r in mine}:
            conn.execute(insert(documents).values(
                patient_id=patient_id, document_id=parent, source=source, status="replaced",
                set_id=head.get("set_id"), message_id=message_id, masked_ps=False,
                invisible_patient=False, invisible_legal=False))

    # -- orders ---------------------------------------------------------------------------

    def _order(self, conn: Connection, patient_id: int, ev: dict[str, Any], message_id: int,
               received: datetime) -> None:
        test = ev.get("test") or {}
        presc = ev.get("prescriber") or {}
        prescriber = presc.get("id") or " ".join(
            x for x in (presc.get("family"), presc.get("given")) if x) or None
        status = "cancelled" if ev["action"] == "cancel" else "active"
        at = ts(ev.get("at"))
        event_id = self._event_row(
            conn, patient_id, "order", ev["key"], message_id, status=status, at=at,
            title=test.get("text") or test.get("code") or "Order", code=test.get("code"),
            data=_dumps({k: ev.get(k) for k in ("test", "prescriber", "placer", "filler",
                                                "control", "status", "priority")}))
        row = conn.execute(select(orders.c.id).where(orders.c.key == ev["key"][:512])).scalar()
        values = {"patient_id": patient_id, "event_id": event_id, "test": test.get("compare"),
                  "prescriber": prescriber, "ordered_at": at, "status": status,
                  "message_id": message_id}
        if row is None:
            row = conn.execute(insert(orders).values(key=ev["key"][:512], **values)
                               .returning(orders.c.id)).scalar_one()
        else:
            conn.execute(update(orders).where(orders.c.id == row).values(**values))
        if status == "active":
            self._redundancy(conn, patient_id, int(row))

    def _redundancy(self, conn: Connection, patient_id: int, order_id: int) -> None:
        """Same test, same patient, a different prescriber within the window → the later
        order is "possibly redundant", linked to the earlier one (whatever arrived first)."""
        me = conn.execute(select(orders).where(orders.c.id == order_id)).mappings().one()
        if not me["test"] or me["ordered_at"] is None:
            return
        window = timedelta(days=self.settings.redundancy_window_days)
        at = _aware(me["ordered_at"])
        assert at is not None
        others = conn.execute(select(orders).where(
            orders.c.patient_id == patient_id, orders.c.test == me["test"],
            orders.c.id != order_id, orders.c.status == "active",
            orders.c.ordered_at >= at - window, orders.c.ordered_at <= at + window)
            .order_by(orders.c.ordered_at, orders.c.id)).mappings().all()
        for o in others:
            if o["prescriber"] == me["prescriber"]:
                continue
            o_at = _aware(o["ordered_at"])
            earlier, later = (o, me) if (o_at, o["id"]) <= (at, me["id"]) else (me, o)
            if later["redundant_of"] is None:
                conn.execute(update(orders).where(orders.c.id == later["id"])
                             .values(redundant_of=earlier["id"]))
                conn.execute(update(timeline_events).where(
                    timeline_events.c.id == later["event_id"])
                    .values(redundant_of=earlier["event_id"]))
            if later["id"] == me["id"]:
                break

    # -- appointments ---------------------------------------------------------------------

    def _appointment(self, conn: Connection, patient_id: int, ev: dict[str, Any],
                     message_id: int, received: datetime) -> None:
        status = {"book": "booked", "reschedule": "booked", "modify": "booked",
                  "cancel": "cancelled", "delete": "deleted",
                  "no_show": "no_show"}.get(ev["action"], "booked")
        start = ts(ev.get("start"))
        event_id = self._event_row(
            conn, patient_id, "appointment", ev["key"], message_id,
            status="active" if status in ("booked", "no_show") else status, at=start,
            title=ev.get("service") or ev.get("reason") or "Appointment", code=status,
            data=_dumps({k: ev.get(k) for k in ("start", "end", "reason", "service",
                                                "location", "professional", "trigger")}
                        | {"appointment_status": status}))
        row = conn.execute(select(appointments.c.id).where(
            appointments.c.key == ev["key"][:512])).scalar()
        values = {"patient_id": patient_id, "event_id": event_id, "start": start,
                  "end": ts(ev.get("end")), "status": status, "message_id": message_id}
        if row is None:
            conn.execute(insert(appointments).values(key=ev["key"][:512], **values))
        else:
            conn.execute(update(appointments).where(appointments.c.id == row).values(**values))
