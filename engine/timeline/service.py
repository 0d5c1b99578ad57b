"""The timeline as the API and the UI use it: authentication, access, audit, queries.

Every read of patient data goes through `Timeline.read_*`, which checks the role and the
care circle, applies masking, and appends an audit row — allowed or denied — before
returning anything. `None` means "not for you": callers answer 403 without saying whether
the patient exists.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine

from engine.store.models import deliveries
from engine.store.write_gate import gate_of
from engine.timeline import audit, conflicts
from engine.timeline.apply import Applier
from engine.timeline.auth import Authenticator, Principal
from engine.timeline.batch import BatchApplier
from engine.timeline.care_circle import has_grant, may_read
from engine.timeline.identity import survivor
from engine.timeline.masking import visible
from engine.timeline.models import (
    documents,
    observations,
    patient_identifiers,
    patients,
    timeline_conflicts,
    timeline_events,
)
from engine.timeline.settings import TimelineSettings

PATIENT_ROLES = ("admin", "clinician")
CONFLICT_ROLES = ("admin", "operator")
HIDDEN_STATUSES = ("cancelled", "deleted", "replaced")


class Denied(Exception):
    """The caller may not read this (wrong role or outside the care circle)."""


@dataclass
class Page:
    items: list[dict[str, Any]]
    total: int
    offset: int
    limit: int


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def _feed_state(status: str, response: str | None) -> str:
    """sent | not_for_dmp (DESTDMP=N) | not_sent_opposition | refused | pending."""
    if status == "delivered":
        return "not_for_dmp" if response == "skipped" else "sent"
    if status == "dead":
        return "not_sent_opposition" if response == "not sent (consent)" else "refused"
    return "pending"


TRANSACTION_BUDGET_S = 0.02  # longest hold of the write lock by one timeline transaction
CHUNK_MAX = 64  # envelopes applied set-based together (their probes and writes)
CHUNK_MIN = 16  # the smallest chunk; a smaller one left waits for the next transaction


class Timeline:
    def __init__(self, db: Engine, settings: TimelineSettings | None = None,
                 catalogue: Any = None,
                 dmp_destinations: Callable[[], set[str]] | None = None) -> None:
        self.db = db
        self.cpu_seconds = 0.0  # CPU of apply_many, read by the engine's stage metric
        self._per_envelope = 0.001  # seconds one envelope held the transaction, smoothed
        # Names of the routes.yaml destinations of type `dmp` (read at each call: a reload
        # may add or remove one); their deliveries say what became of a report in the DMP.
        self._dmp_destinations = dmp_destinations
        self.settings = settings or TimelineSettings.from_env()
        self.auth = Authenticator(db, self.settings)
        self.applier = Applier(self.settings)
        self._catalogue = catalogue  # callable returning the LOINC catalogue (lazy)

    # -- writes (the destination) ---------------------------------------------------------

    def apply(self, envelope: dict[str, Any], generation: int = 0) -> dict[str, int]:
        """``generation``: the delivery's (0 for the first routing, + 1 per replay)."""
        with self.db.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # see _apply_all
            result = BatchApplier(self.applier).apply_chunk(
                conn, [("", envelope, generation)], set())[0]
        if isinstance(result, Exception):
            raise result
        assert result is not None  # a chunk of one is always attempted
        return result

    def apply_many(self, envelopes: list[tuple[str, dict[str, Any], int]]
                   ) -> list[dict[str, int] | Exception | None]:
        """Apply (order key, envelope, generation) triples in order, many to a transaction
        (one commit, one hold of SQLite's write lock), each inside its own savepoint: one that
        fails is rolled back alone and reported as its exception, the later envelopes of the
        same key are not applied (None: they wait behind it). A transaction is committed
        once it has held the lock for `TRANSACTION_BUDGET_S` and the next one begins: the
        intake's group commit, queued on the same lock, never waits behind a whole batch."""
        cpu = time.thread_time()
        try:
            return self._apply_all(envelopes)
        finally:
            self.cpu_seconds += time.thread_time() - cpu

    def _apply_all(self, envelopes: list[tuple[str, dict[str, Any], int]]
                   ) -> list[dict[str, int] | Exception | None]:
        """Chunks of envelopes go to the set-based applier (engine/timeline/batch.py); a
        chunk is sized from the CPU the previous ones took per envelope, so that the
        transaction commits close to `TRANSACTION_BUDGET_S` of holding the write lock, or
        after the chunk in hand when another writer waits for SQLite's write gate."""
        out: list[dict[str, int] | Exception | None] = []
        stopped: set[str] = set()
        batch = BatchApplier(self.applier)
        gate = gate_of(self.db)
        i = 0
        while i < len(envelopes):
            with self.db.begin() as conn:
                if conn.dialect.name == "sqlite":
                    # pysqlite opens no transaction before the first write, so the first
                    # SAVEPOINT would open a deferred one: its reads take a snapshot, and its
                    # first write then fails at once (SQLITE_BUSY_SNAPSHOT) if another writer
                    # committed meanwhile. One explicit transaction, with the write lock (and
                    # the engine's write gate) taken before the first read.
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                started = time.monotonic()
                first = i
                while i < len(envelopes):
                    if i > first and gate is not None and gate.others_waiting():
                        break  # intake's group commit (or another writer) waits: let it go
                    left = TRANSACTION_BUDGET_S - (time.monotonic() - started)
                    size = min(CHUNK_MAX, int(left / self._per_envelope))
                    if size < CHUNK_MIN and i > first:
                        break  # too little left for a chunk worth its probes: commit
                    # Never below CHUNK_MIN: a chunk's probes and writes cost the same for
                    # one envelope as for many, so sizing on the time per envelope of small
                    # chunks alone would shrink the chunks down to one.
                    size = max(CHUNK_MIN, size)
                    chunk = envelopes[i:i + size]
                    t0 = time.monotonic()
                    out.extend(batch.apply_chunk(conn, chunk, stopped))
                    i += len(chunk)
                    spent = (time.monotonic() - t0) / len(chunk)
                    self._per_envelope = 0.5 * self._per_envelope + 0.5 * max(spent, 1e-5)
        return out

    # -- access ---------------------------------------------------------------------------

    def _check(self, conn: Connection, who: Principal, patient_id: int) -> None:
        if who.role not in PATIENT_ROLES or not may_read(
                conn, who, patient_id, self.settings.care_circle_days):
            raise Denied

    def _guarded(self, who: Principal, action: str, patient_id: int, remote: str | None,
                 detail: dict[str, Any], read: Any) -> Any:
        """Check, read, then audit what the caller got (issue #17): allowed, denied (also
        for a patient that does not exist: the caller gets the same 403), not_found (the
        read found nothing to give: a masked or absent document), error (it failed)."""
        pid: int | None = None
        try:
            with self.db.connect() as conn:
                pid = survivor(conn, patient_id) if self._exists(conn, patient_id) else None
                try:
                    if pid is None:
                        raise Denied
                    self._check(conn, who, pid)
                except Denied:
                    audit.record(self.db, who, action, patient_ids=[patient_id],
                                 remote=remote, outcome="denied",
                                 detail=detail | {"exists": pid is not None})
                    raise
                out = read(conn, pid)
        except Denied:
            raise
        except Exception as exc:
            audit.record(self.db, who, action, patient_ids=[pid or patient_id], remote=remote,
                         outcome="error", detail=detail | {"error": type(exc).__name__})
            raise
        audit.record(self.db, who, action, patient_ids=[pid], remote=remote,
                     outcome="not_found" if out is None else "allowed",
                     detail=detail | ({"requested": patient_id} if pid != patient_id else {}))
        return out

    @staticmethod
    def _exists(conn: Connection, patient_id: int) -> bool:
        return conn.execute(select(patients.c.id).where(patients.c.id == patient_id)
                            ).first() is not None

    # -- reads ----------------------------------------------------------------------------

    def find_patients(self, who: Principal, identifier: str, remote: str | None
                      ) -> list[dict[str, Any]]:
        """`identifier`: `value`, `authority|value`, or `INS|value`. Only patients the caller
        may read are returned; the search and each patient shown are audited."""
        if who.role not in PATIENT_ROLES:
            audit.record(self.db, who, "search", patient_ids=None, remote=remote,
                         outcome="denied", detail={"identifier": identifier})
            raise Denied
        authority, _, value = identifier.rpartition("|")
        q = select(patient_identifiers.c.patient_id).where(
            patient_identifiers.c.value == value.strip())
        if authority.upper() == "INS":
            q = q.where(patient_identifiers.c.type == "INS")
        elif authority:
            q = q.where((patient_identifiers.c.authority == authority)
                        | (patient_identifiers.c.namespace == authority))
        with self.db.connect() as conn:
            found = sorted({survivor(conn, int(p)) for p in conn.execute(q).scalars()})
            allowed = [p for p in found if who.role in PATIENT_ROLES
                       and may_read(conn, who, p, self.settings.care_circle_days)]
            result = [self._summary(conn, p) for p in allowed]
        audit.record(self.db, who, "search", patient_ids=allowed or None, remote=remote,
                     detail={"identifier": identifier, "matches": len(allowed)})
        return result

    def _summary(self, conn: Connection, patient_id: int) -> dict[str, Any]:
        p = conn.execute(select(patients).where(patients.c.id == patient_id)).mappings().one()
        ids = conn.execute(select(patient_identifiers).where(
            patient_identifiers.c.patient_id == patient_id)
            .order_by(patient_identifiers.c.id)).mappings().all()
        return {
            "id": p["id"], "family": p["family"], "given": p["given"],
            "birth_date": p["birth_date"], "sex": p["sex"],
            "identity_status": p["identity_status"], "ins": p["ins"],
            "identifiers": [{"authority": i["authority"], "namespace": i["namespace"],
                             "value": i["value"], "type": i["type"]} for i in ids],
            "dmp": {"status": p["dmp_status"], "feeding_opposition": p["dmp_feeding_opposition"],
                    "consultation_consent": p["dmp_consultation_consent"],
                    "collected_at": _iso(p["consent_at"])},
        }

    def read_patient(self, who: Principal, patient_id: int, remote: str | None
                     ) -> dict[str, Any]:
        return self._guarded(who, "patient", patient_id, remote, {},
                             lambda conn, pid: self._summary(conn, pid))

    def read_timeline(self, who: Principal, patient_id: int, remote: str | None, *,
                      types: list[str] | None = None, start: datetime | None = None,
                      end: datetime | None = None, include_inactive: bool = False,
                      offset: int = 0, limit: int = 50) -> dict[str, Any]:
        detail = {"types": types or [], "from": _iso(start), "to": _iso(end),
                  "include_inactive": include_inactive, "offset": offset, "limit": limit}

        def read(conn: Connection, pid: int) -> dict[str, Any]:
            q = select(timeline_events).where(timeline_events.c.patient_id == pid)
            if types:
                q = q.where(timeline_events.c.type.in_(types))
            if start is not None:
                q = q.where(timeline_events.c.at >= start)
            if end is not None:
                q = q.where(timeline_events.c.at < end)
            if not include_inactive:
                q = q.where(timeline_events.c.status.not_in(HIDDEN_STATUSES))
            granted = has_grant(conn, who, pid)
            rows = [dict(r) for r in conn.execute(q.order_by(
                timeline_events.c.at.desc(), timeline_events.c.id.desc())).mappings()]
            rows = [r for r in rows if visible(r, who, granted)]
            page = rows[offset:offset + limit]
            return {"patient": self._summary(conn, pid), "total": len(rows),
                    "offset": offset, "limit": limit,
                    "next_offset": offset + limit if offset + limit < len(rows) else None,
                    "events": [self._event(conn, r) for r in page]}

        return self._guarded(who, "timeline", patient_id, remote, detail, read)

    def _event(self, conn: Connection, r: dict[str, Any]) -> dict[str, Any]:
        out = {"id": r["id"], "type": r["type"], "status": r["status"], "at": _iso(r["at"]),
               "title": r["title"], "code": r["code"], "message_id": r["message_id"],
               "last_message_id": r["last_message_id"],
               "confidentiality": r["confidentiality"],
               "masking": {"MASQUE_PS": r["masked_ps"], "INVISIBLE_PATIENT":
                           r["invisible_patient"], "INVISIBLE_REPRESENTANTS_LEGAUX":
                           r["invisible_legal"]},
               "data": json.loads(r["data"] or "{}")}
        if r["type"] == "order":
            out["possibly_redundant"] = r["redundant_of"] is not None
            out["redundant_of"] = r["redundant_of"]
        if r["type"] == "result":
            out["observations"] = [self._obs(o) for o in conn.execute(
                select(observations).where(observations.c.event_id == r["id"],
                                           observations.c.deleted.is_(False))
                .order_by(observations.c.id)).mappings()]
        if r["type"] == "document":
            doc = conn.execute(select(documents.c.id).where(
                documents.c.event_id == r["id"])).scalar()
            out["document_id"] = doc
        if r["type"] in ("result", "document"):
            feed = self._dmp_feed(conn, r["last_message_id"], r["message_id"])
            if feed is not None:
                out["dmp"] = feed
        return out

    def _dmp_feed(self, conn: Connection, *message_ids: int) -> dict[str, Any] | None:
        """What became of the event's latest message in the DMP, read from its delivery to a
        `dmp` destination: a clinician sees that a report was not sent because the patient
        opposed it (ZFA), or that the DMP refused it and why (issue #7)."""
        names = self._dmp_destinations() if self._dmp_destinations else set()
        if not names:
            return None
        d = deliveries.c
        for mid in dict.fromkeys(message_ids):
            row = conn.execute(
                select(d.status, d.response, d.last_error, d.error_code, d.updated_at,
                       d.destination)
                .where(d.message_id == mid, d.destination.in_(sorted(names)))
                .order_by(d.id.desc()).limit(1)).mappings().first()
            if row is not None:
                return {"destination": row["destination"], "message_id": mid,
                        "state": _feed_state(row["status"], row["response"]),
                        "reason": row["last_error"], "error_code": row["error_code"],
                        "at": _iso(row["updated_at"])}
        return None

    @staticmethod
    def _obs(o: Any) -> dict[str, Any]:
        return {"loinc": o["loinc"], "display": o["display"], "value": o["value"],
                "value_text": o["value_text"], "comparator": o["comparator"],
                "unit": o["unit"], "reference_low": o["reference_low"],
                "reference_high": o["reference_high"], "abnormal_flag": o["abnormal_flag"],
                "status": o["status"], "outcome": o["outcome"],
                "at": _iso(o["observed_at"]), "performing_lab": o["performing_lab"],
                "original": {"code": o["original_code"], "system": o["original_system"],
                             "value": o["original_value"], "unit": o["original_unit"]},
                "message_id": o["message_id"]}

    def read_series(self, who: Principal, patient_id: int, loinc: str, remote: str | None
                    ) -> dict[str, Any]:
        """The analyte of `loinc` (component + system, brief "Clarifications") across labs,
        in its canonical unit, each point with its provenance."""
        term = None
        if self._catalogue is not None:
            try:
                term = self._catalogue().get(loinc)
            except Exception:  # a missing catalogue only narrows the query to the code
                term = None

        def read(conn: Connection, pid: int) -> dict[str, Any]:
            q = (select(observations, timeline_events.c.status.label("event_status"),
                        timeline_events.c.masked_ps, timeline_events.c.confidentiality,
                        timeline_events.c.author_id)
                 .join(timeline_events, timeline_events.c.id == observations.c.event_id)
                 .where(observations.c.patient_id == pid, observations.c.deleted.is_(False),
                        timeline_events.c.status == "active"))
            if term is not None:
                comp, system = term.analyte
                q = q.where(((observations.c.component == comp)
                             & (observations.c.system == system))
                            | (observations.c.loinc == loinc))
            else:
                q = q.where(observations.c.loinc == loinc)
            granted = has_grant(conn, who, pid)
            rows = [dict(r) for r in conn.execute(q.order_by(
                observations.c.observed_at, observations.c.id)).mappings()]
            rows = [r for r in rows if visible(r, who, granted)]
            series = [r for r in rows if r["outcome"] == "normalised"]
            units = sorted({r["unit"] for r in series if r["unit"]})
            return {"loinc": loinc, "analyte": list(term.analyte) if term else None,
                    "unit": units[0] if len(units) == 1 else None,
                    "points": [self._obs(r) for r in series],
                    "not_comparable": [self._obs(r) for r in rows
                                       if r["outcome"] != "normalised"]}

        return self._guarded(who, "observations", patient_id, remote, {"loinc": loinc}, read)

    def read_document(self, who: Principal, document_row_id: int, remote: str | None
                      ) -> tuple[bytes, str] | None:
        """The stored CDA bytes; None when absent or masked for this reader (404)."""
        with self.db.connect() as conn:
            doc = conn.execute(select(documents).where(documents.c.id == document_row_id)
                               ).mappings().first()
        if doc is None or doc["content"] is None:
            audit.record(self.db, who, "document", patient_ids=None, remote=remote,
                         outcome="not_found", detail={"document": document_row_id})
            return None

        def read(conn: Connection, pid: int) -> tuple[bytes, str] | None:
            if not visible(dict(doc), who, has_grant(conn, who, pid)):
                return None
            return bytes(doc["content"]), doc["content_type"] or "application/xml"

        return self._guarded(who, "document", int(doc["patient_id"]), remote,
                             {"document": document_row_id, "status": doc["status"]}, read)

    # -- conflicts (operator: identity vigilance, document provenance) --------------------

    def list_conflicts(self, who: Principal | None, remote: str | None,
                       status: str | None = "open", limit: int = 200
                       ) -> list[dict[str, Any]]:
        """Conflicts with their evidence, for an operator or an admin (identity vigilance
        is their work); the evidence is patient data, so the read is audited."""
        if who is not None and who.role not in CONFLICT_ROLES:
            audit.record(self.db, who, "conflicts", patient_ids=None, remote=remote,
                         outcome="denied")
            raise Denied
        with self.db.connect() as conn:
            rows = conflicts.listing(conn, status, limit)
        if who is not None:
            ids = sorted({p for r in rows for p in (r["patient_id"], r["other_patient_id"])
                          if p is not None})
            audit.record(self.db, who, "conflicts", patient_ids=ids or None, remote=remote,
                         detail={"status": status, "count": len(rows)})
        return rows

    def open_conflicts(self) -> int:
        with self.db.connect() as conn:
            return conflicts.count_open(conn)

    def resolve_conflict(self, conflict_id: int, by: str, action: str,
                         patient_id: int | None = None, note: str | None = None
                         ) -> dict[str, Any]:
        """`apply`: a held conflict's events go to `patient_id` (default: the record its
        local id names), identity untouched; `dismiss`: resolved, the events stay held in
        the row. A conflict that is not held is only marked resolved. ValueError says why
        not (unknown, already resolved, nothing to apply)."""
        if action not in ("apply", "dismiss"):
            raise ValueError("action must be apply or dismiss")
        with self.db.begin() as conn:
            row = conn.execute(select(timeline_conflicts).where(
                timeline_conflicts.c.id == conflict_id).with_for_update()).mappings().first()
            if row is None:
                raise ValueError(f"no conflict {conflict_id}")
            if row["status"] != "open":
                raise ValueError(f"conflict {conflict_id} is already {row['status']}")
            applied = 0
            if action == "apply" and row["held"]:
                target = patient_id or row["patient_id"]
                if target is None or conn.execute(select(patients.c.id).where(
                        patients.c.id == target)).scalar() is None:
                    raise ValueError(f"no patient {target}")
                applied = self.applier.apply_held(conn, json.loads(row["envelope"]),
                                                  int(target))
                text = f"events applied to patient {survivor(conn, int(target))}"
            elif action == "apply":
                text = "resolved"
            else:
                text = "dismissed: events kept, applied to nobody" if row["held"] \
                    else "dismissed"
            if note:
                text += f" ({note[:500]})"
            conn.execute(update(timeline_conflicts).where(
                timeline_conflicts.c.id == conflict_id).values(
                    status="resolved", resolved_at=datetime.now(UTC), resolved_by=by[:128],
                    resolution=text, updated_at=datetime.now(UTC)))
            out = conflicts.as_dict({**row, "status": "resolved", "resolution": text,
                                     "resolved_by": by[:128],
                                     "resolved_at": datetime.now(UTC)})
        out["applied_events"] = applied
        return out

    def patient_count(self) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(patients).where(
                patients.c.merged_into.is_(None))).scalar_one())
