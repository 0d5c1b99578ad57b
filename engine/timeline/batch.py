"""Set-based apply of many results envelopes at once (issue #12): what the timeline spends
per ORU is statements, not rows.

`Applier.apply` runs ~17 statements through SQLAlchemy Core per ORU (the applied-events
probe, the identity lookups, vigilance, the patient row, the event upsert, the observations),
and a statement through Core costs more than SQLite takes to run it. Here a chunk of envelopes
is applied with a fixed number of statements on the driver's cursor, whatever the number of
messages: one applied-events probe, one identity probe, one read of the patients found and of
their INS, one probe of the result events and one of their observations; then one statement
per table written (SQLite: executemany; PostgreSQL: COPY, or UPDATE … FROM unnest).
Decisions are taken in Python, envelope after envelope in the chunk's order, on an in-memory
copy of what the probes read — the holders of identifiers (with the links made meanwhile), the
patient rows, the events and observations already written by earlier envelopes of the chunk —
so the outcome is the one `Applier.apply` gives applying them one after the other. Only the
last state of a row is written: within one transaction nobody sees the intermediate ones.

What the set-based path takes: envelopes whose events are all `result` (ORU^R01 without a
CDA), for a patient block without withdrawn identifiers, whose identifiers name one known
patient or nobody, and which raise no identity-vigilance conflict. Everything else — ADT,
documents, orders, merges, an identifier held by another patient, a held conflict, an
identity merged away — goes through `Applier.apply`, alone in its savepoint, after what the
chunk wrote so far is flushed (the probes are then read again). If anything in a set-based
run fails (a constraint a concurrent process broke, a value the database refuses), its
savepoint is rolled back and its envelopes are applied one by one through `Applier.apply`,
each in its own savepoint, so a failure is reported for its own envelope only, as before.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection

from engine.store.database import _sqlite_value
from engine.timeline.apply import (
    IDENTITY_LOCK_SPACE,
    Applier,
    _dumps,
    _observation_values,
    _once,
    ts,
)
from engine.timeline.identity import DEMOGRAPHICS, QUALIFIED_STATUSES, TRAITS, _norm
from engine.timeline.models import observations, timeline_events

Result = dict[str, int] | Exception | None
Item = tuple[str, dict[str, Any], int]  # (order key, envelope, generation)

_PATIENT_COLUMNS = ("family", "given", "birth_date", "sex", "identity_status", "ins",
                    "ins_authority", "demographics_message_id")
_EVENT_UPDATE = ("patient_id", "last_message_id", "updated_at", "status", "at", "title",
                 "code", "data")
_OBS_VALUES = tuple(_observation_values(0, {}, 0))
_OBS_INSERT = ("event_id", "key", "deleted", *_OBS_VALUES)
_OBS_ROW = itemgetter(*_OBS_INSERT)


_MISSING = object()


class _Slow(Exception):
    """This envelope needs `Applier.apply` (a case the set-based path does not decide)."""


def eligible(env: Any) -> bool:
    """Whether the envelope's shape is one the set-based path applies (results only)."""
    if not isinstance(env, dict) or env.get("format") != "parcours.events":
        return False
    block = env.get("patient")
    events = env.get("events")
    if not isinstance(block, dict) or block.get("withdrawn") or not events:
        return False
    if not isinstance(block.get("identifiers"), list):
        return False
    return all(isinstance(e, dict) and e.get("type") == "result"
               and isinstance(e.get("key"), str) for e in events)


class _Raw:
    """The driver's cursor of the transaction's connection, with the dialect's parameters:
    a statement through SQLAlchemy Core costs ~0.1 ms before the database sees it."""

    def __init__(self, conn: Connection) -> None:
        self.sqlite = conn.dialect.name == "sqlite"
        self.cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    def sql(self, text: str) -> str:
        return text if self.sqlite else text.replace("?", "%s")

    def value(self, v: Any) -> Any:
        return _sqlite_value(v) if self.sqlite else v

    def rows(self, text: str, params: Sequence[Any]) -> list[Any]:
        self.cur.execute(self.sql(text), params)
        return list(self.cur.fetchall())

    def many(self, text: str, params: list[tuple[Any, ...]]) -> None:
        if params:
            self.cur.executemany(self.sql(text), params)

    def insert(self, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
               ) -> None:
        """Rows in order, one statement: on PostgreSQL a COPY (psycopg's executemany sends
        and dumps a statement per row, and arrays for `unnest` are dumped element by element
        in Python); on SQLite the driver's executemany, one prepared statement stepped per
        row."""
        if not rows:
            return
        names = ", ".join(_quoted(columns))
        if self.sqlite or len(rows) == 1:
            self.many(f"INSERT INTO {table.name} ({names}) "
                      f"VALUES ({', '.join('?' for _ in columns)})", rows)
            return
        with self.cur.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def update(self, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
               ) -> None:
        """`UPDATE … SET columns WHERE id` for rows of (*values, id), each id once."""
        if not rows:
            return
        if self.sqlite or len(rows) == 1:
            self.many(f"UPDATE {table.name} SET {_sets(columns)} WHERE id = ?", rows)
            return
        arrays = ", ".join(f"%s::{t}[]" for t in (*_pg_types(table, columns), "bigint"))
        sets = ", ".join(f'"{c}" = v."{c}"' for c in columns)
        names = ", ".join(_quoted((*columns, "row_id")))
        self.cur.execute(f"UPDATE {table.name} AS t SET {sets} FROM unnest({arrays}) "
                         f"AS v({names}) WHERE t.id = v.row_id",
                         [list(c) for c in zip(*rows, strict=True)])

    def in_list(self, column: str, type_: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """`column IN (…)`: `= ANY(array)` on PostgreSQL (one parameter)."""
        if self.sqlite:
            return f"{column} IN ({', '.join('?' for _ in values)})", list(values)
        return f"{column} = ANY(%s::{type_}[])", [list(values)]

    def where_in(self, columns: Sequence[str], types: Sequence[str],
                 keys: Iterable[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        """`(a, b) IN (…)` for many keys in one statement: a VALUES list on SQLite (row
        values, SQLite ≥ 3.15), arrays unnested on PostgreSQL (a fixed number of parameters,
        so psycopg parses the statement once)."""
        keys = list(keys)
        cols = ", ".join(columns)
        if self.sqlite:
            row = "(" + ", ".join("?" for _ in columns) + ")"
            return (f"({cols}) IN (VALUES {', '.join(row for _ in keys)})",
                    [v for k in keys for v in k])
        arrays = ", ".join(f"%s::{t}[]" for t in types)
        return (f"({cols}) IN (SELECT * FROM unnest({arrays}))",
                [[k[n] for k in keys] for n in range(len(columns))])


@dataclass
class _Obs:
    key: str
    message_id: int
    deleted: bool
    status: str | None
    id: int | None = None  # None: inserted by this chunk (`row` is the insert)
    row: dict[str, Any] | None = None
    changes: dict[str, Any] = field(default_factory=dict)  # for a stored row


@dataclass
class _Event:
    id: int | None  # None: inserted by this chunk
    obs: dict[str, _Obs]
    row: dict[str, Any] | None = None  # the insert of a new event
    changes: dict[str, Any] = field(default_factory=dict)


class _Chunk:
    """What the probes read for a run of envelopes, and what the run will write."""

    def __init__(self, raw: _Raw) -> None:
        self.raw = raw
        self.applied: dict[tuple[int, str, str], int] = {}
        self.holders: dict[tuple[str, str], int | None] = {}
        self.merged: set[tuple[str, str]] = set()  # held by a record merged away
        self.patients: dict[int, dict[str, Any]] = {}
        self.dirty_patients: set[int] = set()
        self.ins: dict[int, list[tuple[str, str]]] = {}
        self.events: dict[str, _Event] = {}
        self.new_events: list[_Event] = []
        self.new_obs: list[_Obs] = []
        self.identifiers: list[tuple[Any, ...]] = []
        self.history: list[tuple[Any, ...]] = []
        self.marks: list[tuple[Any, ...]] = []
        self._times: dict[Any, Any] = {}  # OBX time (ISO text) → as the driver stores it

    # -- probes ------------------------------------------------------------------------

    def probe(self, envs: list[dict[str, Any]]) -> None:
        raw = self.raw
        marks = {(int(e["message_id"]), ev["type"], ev["key"][:512])
                 for e in envs for ev in e["events"]}
        where, params = raw.where_in(("message_id", "event_type", "event_key"),
                                     ("bigint", "text", "text"), marks)
        for mid, typ, key, gen in raw.rows(
                f"SELECT message_id, event_type, event_key, generation FROM applied_events "
                f"WHERE {where}", params):
            self.applied[(int(mid), typ, key)] = int(gen)
        idents = {(i["authority"], i["value"]) for e in envs
                  for i in e["patient"]["identifiers"]}
        if idents:
            where, params = raw.where_in(("i.authority", "i.value"), ("text", "text"), idents)
            for authority, value, pid, merged in raw.rows(
                    f"SELECT i.authority, i.value, i.patient_id, p.merged_into "
                    f"FROM patient_identifiers i JOIN patients p ON p.id = i.patient_id "
                    f"WHERE {where}", params):
                self.holders[(authority, value)] = int(pid)
                if merged is not None:
                    self.merged.add((authority, value))
        for k in idents:
            self.holders.setdefault(k, None)
        pids = sorted({p for p in self.holders.values() if p is not None})
        if pids:
            where, params = raw.in_list("id", "bigint", pids)
            for row in raw.rows(f"SELECT id, {', '.join(_PATIENT_COLUMNS)} FROM patients "
                                f"WHERE {where}", params):
                self.patients[int(row[0])] = dict(zip(_PATIENT_COLUMNS, row[1:], strict=True))
            where, params = raw.in_list("patient_id", "bigint", pids)
            for pid, authority, value in raw.rows(
                    f"SELECT patient_id, authority, value FROM patient_identifiers "
                    f"WHERE type = 'INS' AND {where}", params):
                self.ins.setdefault(int(pid), []).append((authority, value))
        keys = sorted({ev["key"][:512] for e in envs for ev in e["events"]})
        found: dict[int, _Event] = {}
        if keys:
            where, params = raw.in_list('"key"', "text", keys)
            for eid, key in raw.rows(f"SELECT id, \"key\" FROM timeline_events WHERE type = "
                                     f"'result' AND {where}", params):
                event = _Event(int(eid), {})
                self.events[key] = event
                found[int(eid)] = event
        if found:
            where, params = raw.in_list("event_id", "bigint", sorted(found))
            for eid, key, mid, deleted, status, oid in raw.rows(
                    f'SELECT event_id, "key", message_id, deleted, status, id FROM observations '
                    f"WHERE {where} ORDER BY id", params):
                found[int(eid)].obs[key] = _Obs(key, int(mid), bool(deleted), status,
                                                id=int(oid))

    # -- identity (identity.resolve, vigilance and _demographics, on the copy) -------------

    def _holder(self, ident: dict[str, Any]) -> int | None:
        key = (ident["authority"], ident["value"])
        if key in self.merged:
            raise _Slow  # `survivor` follows the chain
        return self.holders.get(key)

    def patient_of(self, block: dict[str, Any], message_id: int, now: datetime) -> int:
        ids = block["identifiers"]
        usable_ins = bool(block.get("ins_usable", True))
        local = [p for p in (self._holder(i) for i in ids if i["type"] != "INS") if p]
        ins = [p for p in (self._holder(i) for i in ids if i["type"] == "INS") if p]
        if len(set(local)) > 1:
            raise _Slow  # a conflict for identity_history: resolve writes it
        target = local[0] if local else (ins[0] if ins and usable_ins else None)
        if any(self._holder(i) not in (None, target) for i in ids):
            raise _Slow  # an identifier held by another patient: a conflict
        if target is not None and self._vigilance(block, target):
            raise _Slow  # held for an operator: Applier.apply writes the conflict
        if target is None:
            target = self._new_patient(message_id, now)
        for ident in ids:
            if self._holder(ident) == target:
                continue
            if ident["type"] == "INS" and not usable_ins:
                continue
            self._link(target, ident, message_id, now)
        self._demographics(target, block, message_id, now)
        return target

    def _vigilance(self, block: dict[str, Any], patient_id: int) -> bool:
        row = self.patients[patient_id]
        held = self.ins.get(patient_id, [])
        for i in block["identifiers"]:
            if i["type"] == "INS" and any(a == i["authority"] and v != i["value"]
                                          for a, v in held):
                return True
        if (row["identity_status"] or "").upper() in QUALIFIED_STATUSES:
            return any(block.get(k) and row[k] and _norm(block.get(k)) != _norm(row[k])
                       for k in TRAITS)
        return False

    def _new_patient(self, message_id: int, now: datetime) -> int:
        raw = self.raw
        pid = int(raw.rows("INSERT INTO patients (created_at, updated_at) VALUES (?, ?) "
                           "RETURNING id", (now, now))[0][0])
        self.patients[pid] = dict.fromkeys(_PATIENT_COLUMNS)
        self._history(pid, "created", message_id, now)
        return pid

    def _link(self, patient_id: int, ident: dict[str, Any], message_id: int,
              now: datetime) -> None:
        self.identifiers.append((patient_id, ident["authority"], ident.get("namespace"),
                                 ident["value"], ident["type"], now, message_id))
        if ident["type"] == "INS":
            self.patients[patient_id].update(ins=ident["value"],
                                             ins_authority=ident["authority"])
            self.ins.setdefault(patient_id, []).append((ident["authority"], ident["value"]))
            self.dirty_patients.add(patient_id)
        self._history(patient_id, "identifier_linked", message_id, now,
                      {"authority": ident["authority"], "type": ident["type"]})
        self.holders[(ident["authority"], ident["value"])] = patient_id

    def _demographics(self, patient_id: int, block: dict[str, Any], message_id: int,
                      now: datetime) -> None:
        row = self.patients[patient_id]
        before = row["demographics_message_id"]
        if before is not None and before > message_id:
            return
        cleared = set(block.get("cleared") or ())  # HL7 v2.5.1 §2.5.3: `""` deletes
        new = {k: None if k in cleared else (block.get(k) or row[k]) for k in DEMOGRAPHICS}
        new["identity_status"] = None if "identity_status" in cleared else (
            block.get("identity_status") or row["identity_status"])
        changed = {k for k, v in new.items() if v != row[k]}
        row.update(new, demographics_message_id=message_id, updated_at=now)
        self.dirty_patients.add(patient_id)
        if changed and before is not None:
            self._history(patient_id, "demographics_updated", message_id, now,
                          {"fields": sorted(changed)})

    def _history(self, patient_id: int, action: str, message_id: int, now: datetime,
                 detail: dict[str, Any] | None = None) -> None:
        self.history.append((patient_id, now, message_id, action,
                             json.dumps(detail or {}, ensure_ascii=False, sort_keys=True)))

    # -- results (Applier._result and _observations, on the copy) ----------------------

    def result(self, patient_id: int, ev: dict[str, Any], message_id: int,
               now: datetime) -> None:
        code = ev.get("code") or {}
        deleted = ev["action"] == "delete"
        values = {"status": "deleted" if deleted else "active",
                  "at": self.raw.value(ts(ev.get("at"))),
                  "title": code.get("text") or code.get("code") or "Result",
                  "code": code.get("code"),
                  "data": _dumps({k: ev.get(k) for k in ("code", "placer", "filler", "status",
                                                         "ordering_provider")})}
        key = ev["key"][:512]
        event = self.events.get(key)
        if event is None:
            event = _Event(None, {}, row={
                "patient_id": patient_id, "type": "result", "key": key,
                "message_id": message_id, "last_message_id": message_id, "created_at": now,
                "updated_at": now, "confidentiality": None, "masked_ps": False,
                "invisible_patient": False, "invisible_legal": False, "author_id": None,
                "redundant_of": None, **values})
            self.events[key] = event
            self.new_events.append(event)
        else:
            change = {"patient_id": patient_id, "last_message_id": message_id,
                      "updated_at": now, **values}
            if event.row is not None:
                event.row.update(change)
            else:
                event.changes.update(change)
        self._observations(patient_id, event, ev.get("observations") or [], message_id,
                           deleted)

    def _observations(self, patient_id: int, event: _Event, obs: list[dict[str, Any]],
                      message_id: int, deleted: bool) -> None:
        if not obs:
            return
        before = [(o.key, o.message_id, o.deleted, o.status) for o in event.obs.values()]
        latest: dict[str, dict[str, Any]] = {}
        for o in obs:
            latest[o["key"][:512]] = o
        for key, o in latest.items():
            row = event.obs.get(key)
            if o.get("action") == "delete" or deleted:  # OBX-11 D (table 0085): withdrawn
                if row is not None:
                    self._set(row, {"deleted": True, "status": o.get("status") or "D"})
                continue
            values = self._values(patient_id, o, message_id)
            if row is None:
                new = _Obs(key, message_id, False, values["status"],
                           row={"event_id": None, "key": key, "deleted": False, **values})
                event.obs[key] = new
                self.new_obs.append(new)
                if event.id is None:
                    new.row["_event"] = event  # type: ignore[index]
                else:
                    new.row["event_id"] = event.id  # type: ignore[index]
            else:  # OBX-11 C corrects; a resent F replaces what was sent before as well
                self._set(row, {"deleted": False, **values})
        # A newer generation that no longer carries an observation this message wrote
        # withdraws it (Applier._observations).
        for key, mid, was_deleted, status in before:
            if mid == message_id and not was_deleted and key not in latest:
                self._set(event.obs[key], {"deleted": True, "status": status})

    def _values(self, patient_id: int, o: dict[str, Any], message_id: int
                ) -> dict[str, Any]:
        """apply._observation_values, with the time as the driver stores it, converted once
        per distinct OBX time (a message's OBX share one): the row of every OBX is built
        here, so its cost is the chunk's largest in Python."""
        get = o.get
        original = get("original") or {}
        analyte = get("analyte") or (None, None)
        value = get("value")
        try:
            num = float(value) if value is not None else None
        except ValueError:
            num = None
        at = get("at")
        observed = self._times.get(at, _MISSING)
        if observed is _MISSING:
            observed = self._times[at] = self.raw.value(ts(at))
        oget = original.get
        return {
            "patient_id": patient_id, "loinc": get("loinc"), "component": analyte[0],
            "system": analyte[1], "display": (get("display") or "")[:512],
            "outcome": get("outcome"), "value": value, "value_num": num,
            "value_text": get("value_text"), "comparator": get("comparator"),
            "unit": get("unit"), "reference_low": get("reference_low"),
            "reference_high": get("reference_high"), "abnormal_flag": get("abnormal_flag"),
            "status": get("status"), "performing_lab": get("performing_lab"),
            "observed_at": observed, "original_code": oget("code"),
            "original_system": oget("coding_system"),
            "original_value": (oget("value") or "")[:255],
            "original_unit": oget("unit"), "message_id": message_id,
        }

    @staticmethod
    def _set(o: _Obs, change: dict[str, Any]) -> None:
        if "message_id" in change:
            o.message_id = change["message_id"]
        o.deleted = bool(change["deleted"])
        o.status = change["status"]
        (o.row if o.row is not None else o.changes).update(change)

    # -- the writes --------------------------------------------------------------------

    def flush(self) -> None:
        raw = self.raw
        raw.many("INSERT INTO patient_identifiers (patient_id, authority, namespace, value, "
                 "type, created_at, message_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 self.identifiers)
        raw.many(f"UPDATE patients SET {_sets(_PATIENT_COLUMNS)}, "
                 "updated_at = COALESCE(?, updated_at) WHERE id = ?",
                 [(*(self.patients[p][c] for c in _PATIENT_COLUMNS),
                   self.patients[p].get("updated_at"), p)
                  for p in sorted(self.dirty_patients)])
        raw.many("INSERT INTO identity_history (patient_id, at, message_id, action, detail) "
                 "VALUES (?, ?, ?, ?, ?)", self.history)
        raw.many("INSERT INTO applied_events (message_id, event_type, event_key, applied_at, "
                 "generation) VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id, event_type, "
                 "event_key) DO UPDATE SET applied_at = excluded.applied_at, "
                 "generation = excluded.generation", self.marks)
        if self.new_events:
            cols = [c for c in self.new_events[0].row or () if c != "_event"]
            raw.insert(timeline_events, cols,
                       [tuple(e.row[c] for c in cols) for e in self.new_events if e.row])
            where, params = raw.in_list('"key"', "text",
                                        [e.row["key"] for e in self.new_events if e.row])
            ids = {k: int(i) for i, k in raw.rows(
                f"SELECT id, \"key\" FROM timeline_events WHERE type = 'result' AND {where}",
                params)}
            for e in self.new_events:
                assert e.row is not None
                e.id = ids[e.row["key"]]
        updates = [e for e in self.events.values() if e.row is None and e.changes]
        raw.update(timeline_events, _EVENT_UPDATE,
                   [(*(e.changes[c] for c in _EVENT_UPDATE), e.id) for e in updates])
        inserts = []
        for o in self.new_obs:
            assert o.row is not None
            event = o.row.pop("_event", None)
            if event is not None:
                o.row["event_id"] = event.id
            inserts.append(_OBS_ROW(o.row))
        raw.insert(observations, _OBS_INSERT, inserts)
        shapes: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for event in self.events.values():
            for o in event.obs.values():
                if o.id is not None and o.changes:
                    shape = tuple(sorted(o.changes))
                    shapes.setdefault(shape, []).append(
                        (*(o.changes[c] for c in shape), o.id))
        for shape, params in shapes.items():
            raw.update(observations, shape, params)


def _quoted(columns: Sequence[str]) -> list[str]:
    return [f'"{c}"' for c in columns]


@functools.cache
def _pg_type(table: Table, column: str) -> str:
    """The array element type of a column: VARCHAR(n) as text, so that a value too long is
    refused by the assignment to the column (an explicit cast to VARCHAR(n) would cut it)."""
    from sqlalchemy.dialects import postgresql

    name = table.c[column].type.compile(dialect=postgresql.dialect())
    if name.startswith("VARCHAR"):
        return "text"
    return {"FLOAT": "float8"}.get(name, name.lower())


def _pg_types(table: Table, columns: Sequence[str]) -> list[str]:
    return [_pg_type(table, c) for c in columns]


def _sets(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}" = ?' for c in columns)


class BatchApplier:
    """Applies a chunk of envelopes in the caller's transaction (see the module docstring)."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier

    def apply_chunk(self, conn: Connection, chunk: Sequence[Item], stopped: set[str]
                    ) -> list[Result]:
        """Results in the chunk's order; `stopped` (order keys whose envelope failed) is
        read and extended: the later envelopes of a stopped key are not applied (None)."""
        out: list[Result] = []
        i = 0
        while i < len(chunk):
            if chunk[i][0] in stopped or not eligible(chunk[i][1]):
                out.append(self._one(conn, chunk[i], stopped))
                i += 1
                continue
            j = i
            while j < len(chunk) and eligible(chunk[j][1]):
                j += 1
            done = self._run(conn, chunk[i:j], stopped, out)
            if done < j - i:  # chunk[i + done] needs the envelope-at-a-time path
                out.append(self._one(conn, chunk[i + done], stopped))
                done += 1
            i += done
        return out

    def _one(self, conn: Connection, item: Item, stopped: set[str]) -> Result:
        key, env, generation = item
        if key in stopped:
            return None
        try:
            with conn.begin_nested():
                return self.applier.apply(conn, env, generation)
        except Exception as exc:  # reported per envelope; the batch goes on
            stopped.add(key)
            return exc

    def _run(self, conn: Connection, run: Sequence[Item], stopped: set[str],
             out: list[Result]) -> int:
        """Apply a run of eligible envelopes set-based; returns how many were taken (all,
        or up to the first one that needs `Applier.apply`, which the caller runs)."""
        start = len(out)
        try:
            with conn.begin_nested():
                taken = self._plan(conn, run, stopped, out)
        except Exception:  # redone one by one: each failure for its own envelope
            del out[start:]
            for item in run:
                out.append(self._one(conn, item, stopped))
            return len(run)
        return taken

    def _plan(self, conn: Connection, run: Sequence[Item], stopped: set[str],
              out: list[Result]) -> int:
        raw = _Raw(conn)
        chunk = _Chunk(raw)
        live = [env for key, env, _ in run if key not in stopped]
        if conn.dialect.name == "postgresql":
            _lock_identities(raw, live)
        chunk.probe(live)
        now = raw.value(datetime.now(UTC))  # as the driver stores it, once for the run
        for n, (key, env, generation) in enumerate(run):
            if key in stopped:
                out.append(None)
                continue
            message_id = int(env["message_id"])
            events: list[dict[str, Any]] = env["events"]
            unique = _once(events)
            seen = {id(e): chunk.applied.get((message_id, e["type"], e["key"][:512]))
                    for e in unique}
            todo = [e for e in unique if seen[id(e)] is None or seen[id(e)] < generation]
            if not todo:
                out.append({"applied": 0, "skipped": len(events)})
                continue
            try:  # raises before it writes anything
                patient_id = chunk.patient_of(env["patient"], message_id, now)
            except _Slow:
                chunk.flush()
                return n
            for ev in {(e["type"], e["key"][:512]): e for e in todo}:
                chunk.marks.append((message_id, ev[0], ev[1], now, generation))
                chunk.applied[(message_id, ev[0], ev[1])] = generation
            for ev in todo:
                chunk.result(patient_id, ev, message_id, now)
            out.append({"applied": len(todo), "skipped": len(events) - len(todo)})
        chunk.flush()
        return len(run)


def _lock_identities(raw: _Raw, envs: list[dict[str, Any]]) -> None:
    """Applier._serialise_identities for the whole run: one transaction advisory lock per
    identifier, taken in sorted order in one statement."""
    keys = sorted({zlib.crc32(f"{i['authority']}|{i['value']}".encode()) - 2**31
                   for e in envs for i in e["patient"]["identifiers"]})
    if keys:
        raw.rows("SELECT count(pg_advisory_xact_lock(?::int, k)) FROM "
                 "(SELECT unnest(?::int[]) AS k ORDER BY 1) AS s",
                 (IDENTITY_LOCK_SPACE, keys))

