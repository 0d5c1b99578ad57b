"""DMP consultation through FHIR: `DocumentReference?patient=…&_source=dmp` runs IHE ITI-18
FindDocuments against the DMP, reading `DocumentReference/dmp-…` or `Binary/dmp-…` fetches
the document with ITI-43 (docs/dmp.md "Consultation", docs/fhir.md).

Policy lives here, the protocol in connectors/dmp:
- Who: a clinician (or admin) with a professional id (users.professional_id, the IDNPS the
  VIHF names as its subject); the patient must be in their care circle, as for /api/v1.
  The VIHF is signed with the structure's certificate, as the feed's, but its subject, roles
  and purpose of use are the reader's (`connectors.dmp.saml.reader_identity`).
- "Bris de glace" (break-glass, TRE_R248): `access-mode=bris_de_glace` with an
  `access-reason`, only for the roles the destination's `consultation.break_glass_roles`
  allows; it opens the patient's DMP for `break_glass_hours` to that reader even outside the
  care circle and against a refused consultation consent (ZFA-11), never for a patient who
  opposed it (ZFA-6); the VIHF says so, and every access under it is audited with outcome
  `break_glass`.
- The patient is reached by their qualified INS only (RNIV: PID-32 VALI/QUAL); a patient
  who refused DMP consultation (ZFA, INC) is not consulted in normal mode.
- Every DMP transaction writes an audit row (`fhir.dmp.search`, `fhir.dmp.read`,
  `fhir.dmp.retrieve`) with the mode, the transaction and the DMP's answer codes — in
  addition to the router's own `fhir.search` / `fhir.read` row.
- The DMP's masking is its own; on top, Parcours hides what /api/v1 would hide (MASQUE_PS
  except to the author, V without a grant), with the same `masking.visible`.

Resource ids are `dmp-<patient id>-<sha256(uniqueId)[:24]>`: stateless (any engine process
can serve a read), within FHIR's 64 characters whatever the uniqueId, and naming the patient
so access is decided before the DMP is asked. A read re-runs FindDocuments to find the entry.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from connectors.dmp.client import DMPClient, DMPConfig, DMPUnavailable, transient
from connectors.dmp.iti41 import PARTIAL, SoapError
from connectors.dmp.metadata import INS_OIDS, MASKING_SCHEME, Code, DocumentEntry, cx_ins
from connectors.dmp.retrieve import DocumentRequest
from connectors.dmp.saml import PROFESSION_SYSTEM, Role, VIHFIdentity, coded, reader_identity
from connectors.dmp.stored_query import (
    FindDocuments,
    QueryError,
    QueryResponse,
    find_documents_slots,
)
from engine.fhir.model import finish
from engine.fhir.outcome import FhirError
from engine.fhir.registry import Provider, Registry, SearchParam, SearchResult
from engine.fhir.search import SearchQuery, date_range, int_id, reference_id, token
from engine.fhir.xds_mapping import STATUS_FROM_FHIR, document_reference, scheme_of
from engine.timeline import audit
from engine.timeline.models import audit_log, consents, patients

if TYPE_CHECKING:
    from engine.fhir.context import Context

log = logging.getLogger("parcours.fhir.dmp")
SOURCE = "dmp"
PREFIX = "dmp-"
BREAK_GLASS = "bris_de_glace"
NORMAL = "normal"
QUALIFIED = ("VALI", "QUAL")  # RNIV: the INS is used for a qualified identity only
_ID = re.compile(r"dmp-(\d{1,18})-([0-9a-f]{24})")
DEFAULT_SYSTEMS = {  # a token without a system: the scheme the DMP uses for that parameter
    "type": "2.16.840.1.113883.6.1",  # LOINC (JDV_J07)
    "category": "1.2.250.1.213.1.1.4.1",  # TRE_A03 class codes
    "security-label": "2.16.840.1.113883.5.25",  # HL7 v3 Confidentiality (JDV_J08)
    "setting": "1.2.250.1.213.1.1.4.9",  # JDV_J04 practice settings
    "facility": "1.2.250.1.71.4.2.4",  # JDV_J02 facility types
}
CODE_PARAMS = {"type": "type_codes", "category": "class_codes", "setting":
               "practice_setting_codes", "facility": "facility_type_codes", "security-label":
               "confidentiality_codes", "format": "format_codes", "event": "event_codes"}

PARAMS = (
    SearchParam("patient", "reference", "required: Patient/<id> of a patient with a "
                "qualified INS"),
    SearchParam("status", "token", "current (default) | superseded | entered-in-error"),
    SearchParam("type", "token", "typeCode (LOINC unless a system is given)"),
    SearchParam("category", "token", "classCode (TRE_A03 unless a system is given)"),
    SearchParam("setting", "token", "practiceSettingCode (JDV_J04)"),
    SearchParam("facility", "token", "healthcareFacilityTypeCode (JDV_J02)"),
    SearchParam("security-label", "token", "confidentialityCode (N, R, V, or CI-SIS masking)"),
    SearchParam("format", "token", "formatCode (system required)"),
    SearchParam("event", "token", "eventCodeList (system required)"),
    SearchParam("creation", "date", "creationTime (eq, ge, gt, le, lt)"),
    SearchParam("date", "date", "the same as creation for DMP entries"),
    SearchParam("access-mode", "token", "normal (default) | bris_de_glace (TRE_R248)"),
    SearchParam("access-reason", "string", "why break-glass is needed (required with it)"),
)


@dataclass(frozen=True)
class ConsultationSettings:
    """`destinations.<dmp>.options.consultation` in routes.yaml (docs/dmp.md)."""

    timeout: float = 10.0  # seconds an ITI-18 / ITI-43 may take before a 504
    break_glass_roles: tuple[str, ...] = ("clinician",)
    break_glass_hours: float = 4.0
    profession: Role = Role("10", PROFESSION_SYSTEM, "Médecin")  # TRE_G15, the VIHF role

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ConsultationSettings:
        profession = options.get("profession")
        return cls(
            timeout=float(options.get("timeout", cls.timeout)),
            break_glass_roles=tuple(options.get("break_glass_roles", cls.break_glass_roles)),
            break_glass_hours=float(options.get("break_glass_hours", cls.break_glass_hours)),
            profession=coded(str(profession)) if profession else cls.profession)


@dataclass(frozen=True)
class DMPConnection:
    config: DMPConfig
    settings: ConsultationSettings


def connection_from(config: Any) -> DMPConnection | None:
    """The first `type: dmp` destination whose options have `consultation` (None: the
    consultation is not configured)."""
    if config is None:
        return None
    for cfg in config.destinations.values():
        options = cfg.get("options") or {}
        if cfg.get("type") == "dmp" and isinstance(options.get("consultation"), dict):
            settings = ConsultationSettings.from_options(options["consultation"])
            dmp = DMPConfig.from_options(options)
            dmp.timeout = settings.timeout
            return DMPConnection(dmp, settings)
    return None


def resource_id(patient_id: int, unique_id: str) -> str:
    return f"{PREFIX}{patient_id}-{hashlib.sha256(unique_id.encode()).hexdigest()[:24]}"


@dataclass(frozen=True)
class Access:
    patient_id: int
    patient_cx: str
    mode: str  # normal | bris_de_glace


class Consultation:
    """The DMP source of DocumentReference and Binary; `connection` is read on each request
    so a routes.yaml reload takes effect."""

    def __init__(self, connection: Callable[[], DMPConnection | None]) -> None:
        self.connection = connection

    # -- access -----------------------------------------------------------------------------

    def _connection(self) -> DMPConnection:
        conn = self.connection()
        if conn is None:
            raise FhirError(501, "DMP consultation is not configured (routes.yaml: "
                            "destinations.<dmp>.options.consultation, docs/dmp.md)",
                            code="not-supported")
        return conn

    def _reader(self, ctx: Context, conn: DMPConnection, break_glass: bool) -> VIHFIdentity:
        return reader_identity(conn.config.identity, name_id=ctx.who.professional_id or "",
                               subject_name=ctx.who.username, roles=[conn.settings.profession],
                               break_glass=break_glass)

    def _opened(self, ctx: Context, patient_id: int, hours: float) -> bool:
        """Did this reader open this patient's DMP in bris de glace within `hours`? The
        audit log is the record of it (append-only), so every engine process agrees."""
        since = datetime.now(UTC) - timedelta(hours=hours)
        return ctx.conn.execute(select(audit_log.c.id).where(
            audit_log.c.actor == ctx.who.username, audit_log.c.patient_id == patient_id,
            audit_log.c.action == "fhir.dmp.break_glass", audit_log.c.outcome == "break_glass",
            audit_log.c.at >= since).limit(1)).first() is not None

    def _break_glass_opposed(self, ctx: Context, patient_id: int) -> bool:
        """The latest ZFA collected says the patient opposed bris de glace (ZFA-6, IHE PAM
        FR); kept in the consent's data, the timeline's record of every ZFA."""
        data = ctx.conn.execute(select(consents.c.data).where(
            consents.c.patient_id == patient_id).order_by(
            consents.c.at.desc(), consents.c.id.desc()).limit(1)).scalar()
        try:
            return bool(data) and json.loads(data).get("break_glass_opposition") is True
        except ValueError:
            return False

    def access(self, ctx: Context, conn: DMPConnection, patient_id: int, mode: str,
               reason: str) -> Access:
        """Decide, before the DMP is asked, whether this reader may consult this patient's
        DMP and in which mode; 403 / 404 / 422 otherwise (each audited)."""
        if mode not in (NORMAL, BREAK_GLASS):
            raise FhirError(400, f"access-mode {mode!r}: normal or bris_de_glace",
                            expression="access-mode")
        if not ctx.who.professional_id:
            self._audit(ctx, "fhir.dmp.search", patient_id, "denied",
                        {"why": "no professional id"})
            raise FhirError(403, "DMP consultation needs a health professional identity "
                            "(users.professional_id: the IDNPS named in the VIHF)")
        opening = mode == BREAK_GLASS
        if opening:
            if ctx.who.role not in conn.settings.break_glass_roles:
                self._audit(ctx, "fhir.dmp.break_glass", patient_id, "denied",
                            {"why": "role not allowed", "role": ctx.who.role})
                raise FhirError(403, f"role {ctx.who.role} may not use bris de glace")
            if not reason.strip():
                raise FhirError(400, "bris de glace needs an access-reason",
                                expression="access-reason")
            if not ctx.patient_exists(patient_id):
                raise FhirError(404, "Patient not found")
        elif not ctx.may_read(patient_id):
            if not (ctx.who.role in conn.settings.break_glass_roles and self._opened(
                    ctx, patient_id, conn.settings.break_glass_hours)):
                ctx.readable(patient_id, "Patient")  # 404, audited by the router as denied
            mode = BREAK_GLASS  # still inside a bris de glace this reader opened
        row = ctx.conn.execute(select(
            patients.c.ins, patients.c.ins_authority, patients.c.identity_status,
            patients.c.dmp_consultation_consent).where(patients.c.id == patient_id)).first()
        if row is None:
            raise FhirError(404, "Patient not found")
        if not row.ins or row.ins_authority not in INS_OIDS:
            raise FhirError(422, "the patient has no INS: the DMP is reached by the INS only")
        if row.identity_status not in QUALIFIED:
            raise FhirError(422, "the patient's identity is not qualified (PID-32 VALI/QUAL): "
                            "its INS may not be used to reach the DMP (RNIV)")
        if mode == BREAK_GLASS and self._break_glass_opposed(ctx, patient_id):
            self._audit(ctx, "fhir.dmp.break_glass", patient_id, "denied",
                        {"why": "patient opposed bris de glace (ZFA-6)"})
            raise FhirError(403, "the patient opposed bris de glace access to their DMP "
                            "(ZFA-6)")
        if row.dmp_consultation_consent is False and mode != BREAK_GLASS:
            self._audit(ctx, "fhir.dmp.search", patient_id, "denied",
                        {"why": "consultation consent refused (ZFA)"})
            raise FhirError(403, "the patient refused DMP consultation (ZFA); only bris de "
                            "glace may open it")
        if opening:
            self._audit(ctx, "fhir.dmp.break_glass", patient_id, "break_glass",
                        {"reason": reason})
        return Access(patient_id, cx_ins(row.ins, row.ins_authority), mode)

    def _audit(self, ctx: Context, action: str, patient_id: int, outcome: str,
               detail: dict[str, Any]) -> None:
        audit.record(ctx.db, ctx.who, action, patient_ids=[patient_id], remote=ctx.remote,
                     outcome=outcome, detail=detail)

    # -- talking to the DMP -----------------------------------------------------------------

    def _run(self, ctx: Context, action: str, acc: Access, transaction: str,
             work: Callable[[DMPClient], Any]) -> Any:
        """Run one DMP transaction (we are on a worker thread: the router's to_thread) and
        turn its failures into OperationOutcomes; audit either way."""
        conn = self._connection()
        outcome = "break_glass" if acc.mode == BREAK_GLASS else "allowed"
        detail: dict[str, Any] = {"transaction": transaction, "mode": acc.mode}

        async def call() -> Any:
            client = DMPClient(conn.config)
            try:
                return await work(client)
            finally:
                await client.close()

        try:
            result = asyncio.run(call())
        except DMPUnavailable as exc:
            self._audit(ctx, action, acc.patient_id, "error", detail | {"error": exc.code})
            if "Timeout" in exc.code:
                raise FhirError(504, f"the DMP did not answer within {conn.config.timeout:g} s"
                                f" ({transaction})", code="timeout") from None
            raise FhirError(502, f"the DMP could not be reached ({transaction}: {exc.code})",
                            code="transient") from None
        except SoapError as exc:
            self._audit(ctx, action, acc.patient_id, "error", detail | {"error": "SOAPFault"})
            log.warning("DMP %s: unexpected answer: %s", transaction, str(exc)[:200])
            raise FhirError(502, f"the DMP's answer to {transaction} was not understood",
                            code="exception") from None
        codes = [e.code for e in result.result.errors]
        if not result.result.ok and result.result.status != PARTIAL:
            # The DMP refused (its codes in the detail): the reader got a refusal.
            self._audit(ctx, action, acc.patient_id, "denied", detail | {"dmp_codes": codes})
            raise _refusal(transaction, result)
        self._audit(ctx, action, acc.patient_id, outcome, detail | (
            {"dmp_codes": codes} if codes else {}))
        return result

    def _find(self, ctx: Context, acc: Access, q: FindDocuments, action: str) -> QueryResponse:
        conn = self._connection()
        identity = self._reader(ctx, conn, acc.mode == BREAK_GLASS)
        return self._run(ctx, action, acc, "ITI-18",
                         lambda c: c.find_documents(q, identity=identity))

    def _visible(self, ctx: Context, patient_id: int, e: DocumentEntry) -> bool:
        author = e.authors[0].person.split("^", 1)[0] if e.authors and e.authors[0].person \
            else None
        conf = next((c.code for c in e.confidentiality if c.code in ("N", "R", "V")), None)
        masked = any(c.code == "MASQUE_PS" and c.scheme == MASKING_SCHEME
                     for c in e.confidentiality)
        return ctx.visible({"author_id": author, "masked_ps": masked, "confidentiality": conf},
                           patient_id)

    def _resource(self, ctx: Context, patient_id: int, e: DocumentEntry,
                  data: bytes | None = None) -> dict[str, Any]:
        rid = resource_id(patient_id, e.unique_id)
        doc = document_reference(e, rid, ctx.patient_ref(patient_id), ctx.url(f"Binary/{rid}"),
                                 data)
        return finish(doc, None)

    # -- FHIR interactions ------------------------------------------------------------------

    def search(self, ctx: Context, query: SearchQuery) -> SearchResult:
        conn = self._connection()
        named = [reference_id(v, "Patient") for c in query.get("patient") for v in c.values]
        if len(named) != 1 or named[0] is None or int_id(named[0]) is None:
            raise FhirError(400, "_source=dmp searches one patient: patient=Patient/<id>",
                            expression="patient")
        pid = int(named[0])
        if ctx.patient_exists(pid):
            pid = ctx.survivor(pid)
        mode = query.first("access-mode") or NORMAL
        acc = self.access(ctx, conn, pid, token(mode)[1] or mode,
                          query.first("access-reason") or "")
        q = find_documents(acc.patient_cx, query)
        found = self._find(ctx, acc, q, "fhir.dmp.search")
        entries = [e for e in found.entries if self._visible(ctx, pid, e)]
        if "date" in query.sort or "-date" in query.sort:
            entries.sort(key=lambda e: e.creation_time, reverse="-date" in query.sort)
        page = entries[query.offset:query.offset + query.count] if query.count else []
        return SearchResult(len(entries), [self._resource(ctx, pid, e) for e in page])

    def _entry(self, ctx: Context, rid: str, action: str) -> tuple[Access, DocumentEntry]:
        m = _ID.fullmatch(rid)
        if m is None:
            raise FhirError(404, f"{rid} is not a DMP document id")
        conn = self._connection()
        acc = self.access(ctx, conn, int(m.group(1)), NORMAL, "")
        found = self._find(ctx, acc, FindDocuments(acc.patient_cx, statuses=tuple(
            STATUS_FROM_FHIR.values())), action)
        for e in found.entries:
            if resource_id(acc.patient_id, e.unique_id) == rid and self._visible(
                    ctx, acc.patient_id, e):
                return acc, e
        raise FhirError(404, f"DocumentReference/{rid} not found in the DMP")

    def _retrieve(self, ctx: Context, acc: Access, e: DocumentEntry) -> bytes:
        conn = self._connection()
        identity = self._reader(ctx, conn, acc.mode == BREAK_GLASS)
        got = self._run(ctx, "fhir.dmp.retrieve", acc, "ITI-43", lambda c: c.retrieve(
            acc.patient_cx, [DocumentRequest(e.repository_id, e.unique_id,
                                             e.home_community_id)], identity=identity))
        doc = got.document(e.unique_id)
        if doc is None:
            raise FhirError(404, "the DMP holds the entry but not its document (ITI-43)")
        return doc.content

    def read(self, ctx: Context, rid: str) -> dict[str, Any]:
        """The entry and its document (ITI-18 then ITI-43), data inlined."""
        acc, e = self._entry(ctx, rid, "fhir.dmp.read")
        return self._resource(ctx, acc.patient_id, e, self._retrieve(ctx, acc, e))

    def read_binary(self, ctx: Context, rid: str) -> dict[str, Any]:
        acc, e = self._entry(ctx, rid, "fhir.dmp.read")
        content = self._retrieve(ctx, acc, e)
        ctx.patient_ref(acc.patient_id)  # the router's audit row names the patient shown
        return finish({"resourceType": "Binary", "id": rid,
                       "contentType": e.mime_type or "text/xml",
                       "data": base64.b64encode(content).decode("ascii")}, None)


def _refusal(transaction: str, result: Any) -> FhirError:
    """A registry error as an OperationOutcome: the DMP's codes (never its context, which
    may name the patient), with a status saying whose move it is."""
    codes = ", ".join(dict.fromkeys(e.code for e in result.result.errors)) or "no code"
    if transient(result.result):
        return FhirError(503, f"the DMP is busy ({transaction}: {codes}); try again later",
                         code="transient")
    if any(e.code == "XDSUnknownPatientId" for e in result.result.errors):
        return FhirError(404, f"the patient has no DMP ({transaction}: {codes})")
    return FhirError(422, f"the DMP refused the request ({transaction}: {codes})",
                     code="processing")


def _codes(name: str, query: SearchQuery) -> tuple[Code, ...]:
    out = []
    for c in query.get(name):
        if len(query.get(name)) > 1 and name != "event":
            raise FhirError(400, f"{name} may be given once (values ORed with commas)",
                            expression=name)
        for v in c.values:
            system, code = token(v)
            scheme = scheme_of(system) if system else DEFAULT_SYSTEMS.get(name, "")
            if not code or not scheme:
                raise FhirError(400, f"{name}={v}: system|code (the DMP needs the coding "
                                "scheme)", expression=name)
            out.append(Code(code, scheme))
    return tuple(out)


def _dtm(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def _creation_range(query: SearchQuery) -> tuple[str, str]:
    """FHIR date prefixes → FindDocuments CreationTimeFrom (inclusive) / To (exclusive)."""
    low: datetime | None = None
    high: datetime | None = None
    for c in query.get("creation") + query.get("date"):
        if len(c.values) > 1:
            raise FhirError(400, f"{c.name}: one value per criterion (FindDocuments has one "
                            "time range)", expression=c.name)
        prefix, start, end = date_range(c.values[0], c.name)
        lo, hi = {"eq": (start, end), "ge": (start, None), "gt": (end, None),
                  "le": (None, end), "lt": (None, start)}.get(prefix, (False, False))
        if lo is False:
            raise FhirError(400, f"{c.name}: prefix {prefix} is not supported on the DMP",
                            expression=c.name)
        if lo is not None:
            low = lo if low is None else max(low, lo)
        if hi is not None:
            high = hi if high is None else min(high, hi)
    return (_dtm(low) if low else ""), (_dtm(high) if high else "")


def find_documents(patient_cx: str, query: SearchQuery) -> FindDocuments:
    """The FHIR search → FindDocuments (IHE MHD ITI-67 ↔ ITI-18 parameter mapping)."""
    statuses = []
    for c in query.get("status"):
        for v in c.values:
            status = STATUS_FROM_FHIR.get(token(v)[1] or "")
            if status is None:
                raise FhirError(400, f"status={v}: current, superseded or entered-in-error",
                                expression="status")
            statuses.append(status)
    low, high = _creation_range(query)
    try:
        q = FindDocuments(patient_cx, statuses=tuple(dict.fromkeys(statuses)) or (
            STATUS_FROM_FHIR["current"],), creation_from=low, creation_to=high,
            **{attr: _codes(name, query) for name, attr in CODE_PARAMS.items()})
        find_documents_slots(q)  # checked now: a bad value is the client's 400
    except QueryError as exc:
        raise FhirError(400, str(exc)) from None
    return q


def register_consultation(registry: Registry, connection: Callable[[], DMPConnection | None]
                          ) -> Consultation:
    """DocumentReference `_source=dmp` and Binary `dmp-…` on a registry (engine/fhir/__init__
    calls it with the engine's live routes.yaml)."""
    c = Consultation(connection)
    registry.register(Provider(
        "DocumentReference", "dmp", read=c.read, search=c.search, params=PARAMS,
        sorts=("date", "-date"), id_prefix=PREFIX, source=SOURCE,
        documentation="the patient's documents in the DMP (ITI-18 / ITI-43)"))
    registry.register(Provider("Binary", "dmp.binary", read=c.read_binary, id_prefix=PREFIX,
                               documentation="a DMP document (ITI-43)"))
    return c
