"""The router: accepted messages → route evaluation → transformer chains → outbox rows.

`evaluate` is pure (no store, no I/O): `parcours routes test` and the dry-run box call it
directly. `route_batch` wraps it in the outbox transaction: deliveries are inserted and the
message marked routed in one commit, so a crash leaves either both or neither.

One router routes at a time (a PostgreSQL advisory lock elects it when several engine
processes share the store): routing in message-id order is what keeps per-patient order
from intake through to the deliveries.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import Connection

from engine.config import Config, RouteConfig, apply_transformer_settings
from engine.routing.conditions import Condition, parse_condition
from engine.store.database import Store
from engine.store.models import DeliveryStatus, MessageStatus, deliveries, messages
from transformers.exchange import Exchange
from transformers.hl7.header import Header
from transformers.hl7.reader import HL7ReadError, Message

log = logging.getLogger("parcours.router")

ROUTER_LOCK_ID = 0x5041_5243  # "PARC": advisory lock electing the one routing process

# What routing reads of a message (exchange_from_row, application ACK requests): not the
# stored ACK, sizes or errors. Each column a row carries costs SQLAlchemy result processing.
_ROUTING_COLUMNS = [messages.c[name] for name in (
    "id", "channel", "raw", "charset", "received_at", "remote", "message_type",
    "trigger_event", "control_id", "sending_application", "sending_facility", "patient_key",
    "application_ack_type", "origin",
)]


def _record_backlog(conn: Connection, backlog: list[tuple[int, list[dict[str, Any]]]]) -> None:
    if backlog:
        from engine.routing.backlog import record_many

        record_many(conn, backlog)


# The outbox row, in the order `_write_outbox` binds it ("partition" quoted: a keyword).
_DELIVERY_COLUMNS = ("message_id", "route", "destination", "partition", "generation",
                     "patient_key", "status", "attempts", "next_attempt_at", "created_at",
                     "updated_at", "delivered_at", "content_type", "payload", "last_error",
                     "response")
_OUTBOX_INSERT = ("INSERT INTO deliveries ({}) VALUES ({})".format(
    ", ".join(f'"{c}"' for c in _DELIVERY_COLUMNS), ", ".join("?" for _ in _DELIVERY_COLUMNS)))
_ROUTED_UPDATE = "UPDATE messages SET status = ?, error = ? WHERE id = ? AND status = ?"


def _write_outbox(store: Store, conn: Connection, statuses: list[dict[str, Any]],
                  new_rows: list[dict[str, Any]]) -> None:
    """The batch's deliveries and message statuses through the driver's cursor, in the
    caller's transaction: SQLAlchemy Core processed every bound value of every row in
    Python (800 deliveries a batch of 200 ORU) before the driver's own executemany."""
    from engine.store.database import _sqlite_value
    from engine.store.write_gate import gate_of

    sqlite = store.dialect == "sqlite"
    raw = conn.connection.dbapi_connection
    gate = gate_of(store.engine)
    if gate is not None:  # the raw cursor bypasses the statement hook that takes it
        gate.hold(raw)
    memo: dict[datetime, Any] = {}  # one `now` for every row of the batch: formatted once

    def value(v: Any) -> Any:
        if not sqlite or type(v) is not datetime:
            return v
        got = memo.get(v)
        if got is None:
            got = memo[v] = _sqlite_value(v)
        return got

    cur = raw.cursor()
    try:
        cur.executemany(_ROUTED_UPDATE if sqlite else _ROUTED_UPDATE.replace("?", "%s"),
                        [(st["st"], st["err"], st["mid"], st["was"]) for st in statuses])
        if new_rows:
            cur.executemany(_OUTBOX_INSERT if sqlite else _OUTBOX_INSERT.replace("?", "%s"),
                            [tuple(value(row[c]) for c in _DELIVERY_COLUMNS)
                             for row in new_rows])
    finally:
        cur.close()


def partition_of(patient_key: str | None, message_id: int, partitions: int) -> int:
    """Stable across processes and restarts (crc32, not Python's salted hash)."""
    key = patient_key or f"message:{message_id}"
    return zlib.crc32(key.encode("utf-8")) % partitions


@dataclass
class DestinationPayload:
    destination: str
    payload: bytes
    content_type: str


@dataclass
class RouteResult:
    route: str
    matched: bool
    reason: str = ""  # why it did not match, or why it failed
    filtered_by: str | None = None  # transformer that returned None
    error: str | None = None  # transformer exception
    steps: list[tuple[str, str]] = field(default_factory=list)  # (transformer, output preview)
    payloads: list[DestinationPayload] = field(default_factory=list)
    # Side information transformers leave in headers for the engine (not for destinations).
    backlog: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def exchange_from_row(row: dict[str, Any]) -> Exchange:
    raw: bytes = row["raw"]
    charset = row.get("charset") or "utf-8"
    message: Message | None = None
    if row.get("message_type") == "CDA" or charset == "xml":
        text_value = raw.decode("utf-8", "replace")
        content_type = "application/xml"
    else:
        text_value = raw.decode(charset, "replace")
        content_type = "application/hl7-v2"
        try:
            message = Message.parse(text_value, charset)
        except HL7ReadError:
            message = None
    received = row.get("received_at")
    headers = {
        "channel": row.get("channel"),
        "message_type": row.get("message_type") or "",
        "trigger_event": row.get("trigger_event") or "",
        "message_code": "^".join(x for x in (row.get("message_type"), row.get("trigger_event"))
                                 if x),
        "control_id": row.get("control_id") or "",
        "sending_application": row.get("sending_application") or "",
        "sending_facility": row.get("sending_facility") or "",
        "patient_key": row.get("patient_key"),
        "charset": charset if charset != "xml" else "utf-8",
        "received_at": received.isoformat() if hasattr(received, "isoformat") else received,
        "received_date": received.strftime("%Y-%m-%d") if hasattr(received, "strftime") else None,
        "origin": row.get("origin"),
    }
    # One reading of the message for all its routes: transformers that need the message as
    # received (normalise_lab, oru_events, crbio) find it here instead of parsing it again.
    shared: dict[str, Any] = {"parsed": (text_value, message)} if message is not None else {}
    return Exchange(message_id=int(row.get("id") or 0), channel=row.get("channel") or "",
                    raw=raw, text=text_value, message=message, headers=headers,
                    content_type=content_type, shared=shared)


def exchange_from_bytes(raw: bytes, channel: str = "test") -> Exchange:
    """For dry runs: an exchange from a file, read the way intake would read it."""
    from transformers.hl7.charset import UnsupportedCharset
    from transformers.hl7.header import HeaderError, patient_key, read_header, resolve_charset

    row: dict[str, Any] = {"id": 0, "channel": channel, "raw": raw,
                           "received_at": datetime.now(UTC)}
    stripped = raw.lstrip()
    if stripped.startswith(b"<"):
        row.update(message_type="CDA", charset="xml")
        return exchange_from_row(row)
    try:
        h = read_header(raw)
        codec = resolve_charset(h, None)
    except (HeaderError, UnsupportedCharset):
        h, codec = Header(), "utf-8"
    text_value = raw.decode(codec, "replace")
    row.update(message_type=h.message_type, trigger_event=h.trigger_event,
               control_id=h.control_id, sending_application=h.sending_application,
               sending_facility=h.sending_facility, charset=codec,
               patient_key=patient_key(text_value, h.encoding, codec))
    return exchange_from_row(row)


class PrunedMessage(Exception):
    """Its raw bytes were dropped by retention (engine/store/prune.py): nothing left to route."""

    def __str__(self) -> str:
        return (f"message {self.args[0]}: its raw bytes were removed by retention "
                "(parcours prune); it cannot be routed again")


_UNDECIDED: Any = object()


def _first_component(value: str) -> str:
    return value.split("^", 1)[0]


class CompiledRoute:
    def __init__(self, cfg: RouteConfig, resolve: Callable[[str], Callable[..., Any]]) -> None:
        self.cfg = cfg
        when = cfg.when or {}
        self.conditions: list[Condition] = [parse_condition(c) for c in when.get("fields", [])]
        self.match_values: dict[str, set[str]] = {}
        for key in ("message_type", "trigger_event", "sending_application", "sending_facility"):
            if key in when:
                v = when[key]
                self.match_values[key] = {v} if isinstance(v, str) else set(v)
        self.chain = [(name, resolve(name)) for name in cfg.transform]
        # What the header tests decided, by the header values they read: a feed sends the
        # same few types from the same few senders all day.
        self._keys = tuple(self.match_values)
        self._decided: dict[tuple[Any, ...], str | None] = {}

    def why_not(self, ex: Exchange) -> str | None:
        """None when the route matches; else a sentence saying which test failed."""
        h = ex.headers
        key = (h.get("origin"), ex.channel, *(h.get(k) for k in self._keys))
        reason = self._decided.get(key, _UNDECIDED)
        if reason is _UNDECIDED:
            if len(self._decided) > 4096:  # bounded, whatever senders send
                self._decided.clear()
            reason = self._decided[key] = self._header_test(ex)
        if reason is not None:
            return reason
        for cond in self.conditions:
            if ex.message is None:
                return f"{cond.text!r}: not an HL7 v2 message"
            if not cond.holds(ex.message):
                return f"condition {cond.text!r} does not hold"
        return None

    def _header_test(self, ex: Exchange) -> str | None:
        if not self.cfg.enabled:
            return "route is disabled"
        if ex.headers.get("origin") == "history" and not self.cfg.history:
            return "imported history takes only routes with history: true"
        if self.cfg.from_channels and ex.channel not in self.cfg.from_channels:
            return f"channel {ex.channel!r} is not in from: {list(self.cfg.from_channels)}"
        for key, allowed in self.match_values.items():
            value = ex.headers.get(key) or ""
            if value not in allowed and _first_component(value) not in allowed:
                return f"{key} {value!r} is not one of {sorted(allowed)}"
        return None


@dataclass(frozen=True)
class ActiveRoutes:
    """What one batch routes with, from one routes.yaml."""

    config: Config
    routes: tuple[CompiledRoute, ...]
    disabled: frozenset[str]


class Router:
    def __init__(self, store: Store, config: Config,
                 resolve: Callable[[str], Callable[..., Any]], partitions: int) -> None:
        self.store = store
        self.partitions = partitions
        self._resolve = resolve
        self.set_config(config)
        self.routed = 0
        self.normalisation_counts: dict[str, int] = {}
        # CPU of routing (reading, planning, the outbox writes) apart from the transformers',
        # which are counted per transformer: parcours_stage_cpu_seconds on /metrics.
        self.cpu_seconds = 0.0
        self.transformer_cpu: dict[str, float] = {}
        self._lock_conn: Connection | None = None

    def set_config(self, config: Config) -> None:
        """Swap routes atomically: a batch in progress finishes with the routes it started.

        Config, compiled routes and disabled destinations are one object swapped by one
        assignment, and a batch reads that object once (`route_batch`): a reload on the event
        loop while the router thread is mid-batch used to change the routes between two
        messages of the same transaction (docs/architecture.md: "between two batches").
        """
        self.use(self.prepare(config))

    def prepare(self, config: Config) -> ActiveRoutes:
        """Compile `config`'s routes without using them (a reload checks it can first)."""
        compiled = [CompiledRoute(r, self._resolve) for r in config.routes]
        disabled = frozenset(
            n for n, c in config.destinations.items() if c.get("enabled") is False)
        return ActiveRoutes(config, tuple(compiled), disabled)

    def use(self, active: ActiveRoutes) -> None:
        apply_transformer_settings(active.config)  # e.g. the CR-BIO laboratory, before a batch
        self.active = active

    @property
    def config(self) -> Config:
        return self.active.config

    # -- pure evaluation ------------------------------------------------------------------

    def evaluate(self, ex: Exchange, active: ActiveRoutes | None = None, *,
                 run_disabled: bool = False, cpu: dict[str, float] | None = None,
                 preview: bool = True) -> list[RouteResult]:
        """Routing skips the transformers of a route whose destinations are all disabled;
        a dry run (`run_disabled`) runs them, so an operator sees what they would receive.

        `preview`: describe each step's output (`RouteResult.steps`, for dry runs and
        `parcours routes test`); routing does without, since serialising an intermediate
        JSON body only to report its size was a large share of the router's CPU."""
        active = active or self.active
        config, routes, disabled = active.config, active.routes, active.disabled
        results: list[RouteResult] = []
        for route in routes:
            reason = route.why_not(ex)
            if reason is not None:
                results.append(RouteResult(route.cfg.name, False, reason))
                continue
            if not run_disabled and route.cfg.to and set(route.cfg.to) <= disabled:
                # Matched, but nothing would be queued: the transformers (CR-BIO building)
                # are not run for nothing.
                results.append(RouteResult(route.cfg.name, True, "every destination of the "
                                           "route is disabled (enabled: false)"))
                if config.evaluation == "first" or route.cfg.stop:
                    break
                continue
            result = RouteResult(route.cfg.name, True)
            current: Exchange | None = ex.copy()
            last: tuple[bytes, str] | None = None  # the payload after the last step
            for name, fn in route.chain:
                started = time.thread_time()
                try:
                    current = fn(current)
                except Exception as exc:
                    result.error = f"transformer {name!r} failed: {type(exc).__name__}: {exc}"
                    current = None
                    break
                finally:
                    if cpu is not None:
                        cpu[name] = cpu.get(name, 0.0) + time.thread_time() - started
                if current is None:
                    result.filtered_by = name
                    break
                if preview:
                    last = current.payload()
                    result.steps.append((name, f"{last[1]}, {len(last[0])} bytes"))
                else:
                    last = None
            if current is not None:
                body, ctype = last if last is not None else current.payload()
                result.payloads = [DestinationPayload(d, body, ctype) for d in route.cfg.to]
                result.backlog = list(current.headers.get("mapping_backlog") or [])
                result.counts = dict(current.headers.get("normalisation_counts") or {})
            elif result.error:
                result.payloads = [DestinationPayload(d, b"", "text/plain")
                                   for d in route.cfg.to]
            results.append(result)
            if config.evaluation == "first" or route.cfg.stop:
                break
        return results

    # -- the outbox transaction -----------------------------------------------------------

    def acquire_leadership(self) -> bool:
        """PostgreSQL: one router among the engine processes; SQLite: always this one."""
        if self.store.dialect != "postgresql":
            return True
        if self._lock_conn is None:
            self._lock_conn = self.store.engine.connect()
        got = self._lock_conn.execute(
            text("SELECT pg_try_advisory_lock(:k)"), {"k": ROUTER_LOCK_ID}
        ).scalar()
        self._lock_conn.commit()
        return bool(got)

    def release_leadership(self) -> None:
        if self._lock_conn is not None:
            try:
                self._lock_conn.close()  # closing the session releases the advisory lock
            finally:
                self._lock_conn = None

    def route_batch(self, limit: int = 200) -> tuple[int, set[int], list[dict[str, Any]]]:
        """Route up to `limit` accepted messages.

        Returns (count, partitions touched, application-ACK requests): the routed rows whose
        sender asked for an application acknowledgement (MSH-16), with their outcome.
        """
        started = time.thread_time()
        in_transformers = sum(self.transformer_cpu.values())
        try:
            return self._route_batch(limit)
        finally:
            self.cpu_seconds += (time.thread_time() - started) - (
                sum(self.transformer_cpu.values()) - in_transformers)

    def _route_batch(self, limit: int) -> tuple[int, set[int], list[dict[str, Any]]]:
        now = datetime.now(UTC)
        touched: set[int] = set()
        app_acks: list[dict[str, Any]] = []
        # Read, then evaluate with no transaction open, then write in one short transaction:
        # the transformers' CPU time must not be spent holding SQLite's one write lock, which
        # the intake's group commit waits for.
        with self.store.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(
                select(*_ROUTING_COLUMNS).where(messages.c.status == MessageStatus.ACCEPTED)
                .order_by(messages.c.id).limit(limit)
            ).mappings()]
        if not rows:
            return 0, touched, app_acks
        new_rows: list[dict[str, Any]] = []
        statuses: list[dict[str, Any]] = []
        backlog: list[tuple[int, list[dict[str, Any]]]] = []
        active = self.active  # one routes.yaml for the whole batch, whatever reload does
        for row in rows:
            status, error, dels = self._plan(row, now, generation=0, backlog=backlog,
                                             active=active)
            for d in dels:
                touched.add(d["partition"])
            new_rows += dels
            statuses.append({"mid": row["id"], "st": status, "err": error,
                             "was": MessageStatus.ACCEPTED})
            if row.get("application_ack_type") in ("AL", "ER", "SU"):
                app_acks.append({"id": row["id"], "channel": row["channel"],
                                 "remote": row["remote"], "raw": row["raw"],
                                 "charset": row["charset"], "status": status,
                                 "error": error,
                                 "mode": row["application_ack_type"]})
        with self.store.engine.begin() as conn:
            _record_backlog(conn, backlog)
            _write_outbox(self.store, conn, statuses, new_rows)
        self.routed += len(rows)
        return len(rows), touched, app_acks

    def replay(self, message_id: int) -> tuple[int, set[int]]:
        """Route one message again through the current routes, as a new generation."""
        now = datetime.now(UTC)
        with self.store.engine.begin() as conn:
            row = conn.execute(select(messages).where(messages.c.id == message_id)).mappings()
            found = row.first()
            if found is None:
                raise KeyError(message_id)
            r = dict(found)
            if r.get("pruned_at") is not None:
                raise PrunedMessage(message_id)
            gen = conn.execute(select(func.max(deliveries.c.generation))
                               .where(deliveries.c.message_id == message_id)).scalar()
            generation = 0 if gen is None else int(gen) + 1
            backlog: list[tuple[int, list[dict[str, Any]]]] = []
            status, error, dels = self._plan(r, now, generation=generation, backlog=backlog)
            _record_backlog(conn, backlog)
            if dels:
                conn.execute(insert(deliveries), dels)
            conn.execute(update(messages).where(messages.c.id == message_id)
                         .values(status=status, error=error))
        return len(dels), {d["partition"] for d in dels}

    def _plan(self, row: dict[str, Any], now: datetime, generation: int,
              backlog: list[tuple[int, list[dict[str, Any]]]] | None = None,
              active: ActiveRoutes | None = None,
              ) -> tuple[str, str | None, list[dict[str, Any]]]:
        """Evaluate one message; mapping-backlog entries are appended to `backlog` for the
        caller to record in its write transaction."""
        active = active or self.active
        ex = exchange_from_row(row)
        results = self.evaluate(ex, active, cpu=self.transformer_cpu, preview=False)
        backlog_entries = [b for r in results for b in r.backlog]
        if backlog is not None and backlog_entries:
            backlog.append((int(row["id"]), backlog_entries))
        # Count each message's observations once, even when several routes normalise it.
        counts = next((r.counts for r in results if r.counts), {})
        for outcome, n in counts.items():
            self.normalisation_counts[outcome] = self.normalisation_counts.get(outcome, 0) + n
        part = partition_of(row.get("patient_key"), int(row["id"]), self.partitions)
        dels: list[dict[str, Any]] = []
        errors: list[str] = []
        for res in results:
            if not res.matched or res.filtered_by:
                continue
            for p in res.payloads:
                if p.destination in active.disabled:
                    continue  # `enabled: false`: the route stays readable, nothing is queued
                failed = res.error is not None
                if failed:
                    errors.append(res.error or "")
                dels.append({
                    "message_id": row["id"], "route": res.route, "destination": p.destination,
                    "partition": part, "generation": generation,
                    "patient_key": row.get("patient_key"),
                    "status": DeliveryStatus.DEAD if failed else DeliveryStatus.PENDING,
                    "attempts": 0, "next_attempt_at": now, "created_at": now,
                    "updated_at": now, "delivered_at": None, "content_type": p.content_type,
                    "payload": p.payload, "last_error": res.error, "response": None,
                })
        if not any(r.matched for r in results):
            return MessageStatus.UNROUTED, "no route matched", []
        if not dels:
            return MessageStatus.DONE, "filtered by every matching route", []
        if errors:
            return MessageStatus.FAILED, "; ".join(sorted(set(errors))), dels
        return MessageStatus.ROUTED, None, dels
