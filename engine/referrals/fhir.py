"""Referrals through FHIR R4 (issue #14, on the API of issue #13, docs/fhir.md).

- **ServiceRequest**, ids `dac-<n>`: a second provider of the type beside the lab orders
  (engine/fhir/order.py). Referrals are told apart by code: `category` SNOMED CT 3457005
  "Patient referral" and `identifier` the requester's referral id (`urn:oid:<authority>` |
  RF1-6), the same key as the HL7 path, so a request is one whichever door it came in by.
  Read, search (`patient`, `patient.identifier`, `status`, `authored`, `requester`,
  `performer`, `identifier`, `category`, `_id`, `_lastUpdated`), create (in a transaction
  Bundle with its Patient and Practitioner/PractitionerRole/Organization), PUT and PATCH
  (status changes checked against the workflow; a PUT also modifies the details, as an I13).
- **Task**, ids `dac-<n>`: the DAC's workflow on that request (`focus` = the ServiceRequest,
  `status` = the workflow status, `owner` = the structure); read, search, PUT/PATCH of the
  status, checked like the UI's buttons.
- **Patient, Practitioner, PractitionerRole, Organization**: create only, for the entries of
  a referral Bundle. A Patient is resolved by its identifiers as an HL7 PID is (INS OIDs
  1.2.250.1.213.1.4.8/.9/.10, local ids), created when nobody matches; the others are kept
  for the transaction only (their content is what the ServiceRequest's requester and
  performer name) and get an id derived from their identifier.

Every write runs on the transaction the FHIR router opened (`ctx.conn`) and through the
service's own rules (`Referrals.apply_hl7` for requests as sent, `Referrals.act_on` for
status changes); a refused transition is a 422 OperationOutcome naming the allowed ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select

from engine.fhir.context import Context
from engine.fhir.model import InvalidResource, checked, finish, version_of
from engine.fhir.outcome import FhirError
from engine.fhir.registry import Provider, Registry, SearchParam, SearchResult
from engine.fhir.search import (
    SearchQuery,
    date_condition,
    int_id,
    paged,
    reference_id,
    token,
)
from engine.referrals import workflow as wf
from engine.referrals.models import referrals, structure_members, support_structures
from engine.referrals.service import NotFound, Referrals
from engine.timeline import identity
from engine.timeline.models import patients

PREFIX = "dac-"
SNOMED = "http://snomed.info/sct"
REFERRAL = {"system": SNOMED, "code": "3457005", "display": "Patient referral"}
RPPS = "urn:oid:1.2.250.1.71.4.2.1"  # idNatPs (ANS)
ADELI = "urn:oid:1.2.250.1.71.4.2.1.1"
FINESS = "http://finess.sante.gouv.fr"
IDNST = "urn:oid:1.2.250.1.71.4.2.2"  # idNatSt: 1 + FINESS, 3 + SIRET
INS_OIDS = ("1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10",
            "1.2.250.1.213.1.4.11")
PROFILES_SR = ("http://hl7.org/fhir/StructureDefinition/ServiceRequest",)
PROFILES_TASK = ("http://hl7.org/fhir/StructureDefinition/Task",)
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")

# FHIR request-priority ↔ HL7 table 0280 (urgent has no 0280 code: as asap).
PRIORITY_TO_0280 = {"routine": "R", "urgent": "A", "asap": "A", "stat": "S"}
# Task.status for each workflow status (R4 task-status has no "expired").
TASK_STATUS = {s: s for s in wf.STATUSES} | {wf.EXPIRED: "cancelled"}


def system_of(authority: str) -> str:
    return f"urn:oid:{authority}" if _OID.match(authority or "") else (authority or "")


def authority_of(system: str) -> str:
    return system[len("urn:oid:"):] if system.startswith("urn:oid:") else system


def _sid(resource_id: str) -> int:
    rid = int_id(resource_id, PREFIX)
    if rid is None:
        raise FhirError(404, f"{resource_id} not found")
    return rid


# -- what a referral looks like in FHIR ----------------------------------------------------

def _requester(rp: dict[str, Any] | None) -> dict[str, Any] | None:
    if not rp:
        return None
    name = " ".join(x for x in (rp.get("given"), rp.get("family")) if x)
    out: dict[str, Any] = {}
    if rp.get("professional_id"):
        out["identifier"] = {"system": RPPS, "value": rp["professional_id"]}
    elif rp.get("structure_id"):
        out["identifier"] = {"system": FINESS, "value": rp["structure_id"]}
    if name or rp.get("organisation"):
        out["display"] = name + (f" ({rp['organisation']})" if rp.get("organisation") and name
                                 else rp.get("organisation") or "")
    return out or None


def _owner(r: dict[str, Any]) -> dict[str, Any] | None:
    if not r.get("structure_id"):
        return None
    out: dict[str, Any] = {"identifier": {"system": FINESS, "value": r["structure_id"]}}
    if r.get("structure_name"):
        out["display"] = r["structure_name"]
    return out


def service_request(ctx: Context, r: dict[str, Any]) -> dict[str, Any]:
    """The ServiceRequest of a referral summary (`Referrals._summary`)."""
    data = r.get("data") or {}
    out: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": f"{PREFIX}{r['id']}",
        "identifier": [{"system": system_of(r["authority"]), "value": r["identifier"]}],
        "status": wf.SERVICE_REQUEST_STATUS[r["status"]], "intent": "order",
        "category": [{"coding": [REFERRAL]}],
        "subject": ctx.patient_ref(int(r["patient_id"])),
    }
    if r.get("priority") in PRIORITY_TO_0280:
        out["priority"] = r["priority"]
    if r.get("type"):
        out["code"] = {"text": r["type"]}
    if r.get("authored_at"):
        out["authoredOn"] = r["authored_at"]
    if r.get("expires_at"):
        out["occurrencePeriod"] = {"end": r["expires_at"]}
    requester = _requester(r.get("requester"))
    if requester:
        out["requester"] = requester
    owner = _owner(r)
    if owner:
        out["performer"] = [owner]
    if r.get("reason"):
        out["reasonCode"] = [{"text": r["reason"]}]
    diagnoses = [{"coding": [{"code": d["code"], "display": d.get("display") or d["code"]}]}
                 for d in data.get("diagnoses") or [] if d.get("code")]
    if diagnoses:
        out.setdefault("reasonCode", []).extend(diagnoses)
    notes = [{"text": n} for n in data.get("notes") or [] if n]
    if notes:
        out["note"] = notes
    return finish(out, _ts(r.get("updated_at")), PROFILES_SR)


def task(ctx: Context, r: dict[str, Any]) -> dict[str, Any]:
    """The Task of a referral detail (`Referrals._detail`): the DAC's workflow."""
    out: dict[str, Any] = {
        "resourceType": "Task", "id": f"{PREFIX}{r['id']}",
        "status": TASK_STATUS[r["status"]], "businessStatus": {"text": r["status"]},
        "intent": "order",
        "focus": {"reference": f"ServiceRequest/{PREFIX}{r['id']}"},
        "for": ctx.patient_ref(int(r["patient_id"])),
    }
    if r.get("authored_at"):
        out["authoredOn"] = r["authored_at"]
    if r.get("updated_at"):
        out["lastModified"] = r["updated_at"]
    requester = _requester(r.get("requester"))
    if requester:
        out["requester"] = requester
    owner = _owner(r)
    if owner:
        out["owner"] = owner
    history = r.get("history") or []
    reasons = [h["detail"]["reason"] for h in history if h["detail"].get("reason")]
    if reasons:
        out["statusReason"] = {"text": reasons[-1]}
    notes = [{"text": h["detail"]["note"], "time": h["at"], "authorString": h["actor"]}
             for h in history if h["detail"].get("note")]
    if notes:
        out["note"] = notes
    return finish(out, _ts(r.get("updated_at")), PROFILES_TASK)


def _ts(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        dt = datetime.fromisoformat(value)
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return None


# -- the providers ---------------------------------------------------------------------------

class ReferralFhir:
    """The handlers, bound to the engine's `Referrals` (its RRI replies included)."""

    def __init__(self, service: Referrals) -> None:
        self.service = service

    # reading -----------------------------------------------------------------------------

    def _row(self, ctx: Context, resource_id: str) -> dict[str, Any]:
        """The referral, if the caller may see it: its structure's coordinators, its
        requester, the patient's care circle, admins. 404 otherwise, as for no request."""
        rid = _sid(resource_id)
        try:
            row = self.service._visible(ctx.conn, ctx.who, rid)  # noqa: SLF001
        except NotFound:
            row = ctx.conn.execute(select(referrals).where(referrals.c.id == rid)
                                   ).mappings().first()
            if row is None or row["tombstone"]:
                raise FhirError(404, f"{resource_id} not found") from None
            ctx.readable(ctx.survivor(int(row["patient_id"])), resource_id)
        return self.service._detail(ctx.conn, row)  # noqa: SLF001

    def read_request(self, ctx: Context, resource_id: str) -> dict[str, Any]:
        return service_request(ctx, self._row(ctx, resource_id))

    def read_task(self, ctx: Context, resource_id: str) -> dict[str, Any]:
        return task(ctx, self._row(ctx, resource_id))

    def _visibility(self, ctx: Context) -> Any:
        """SQL: the referrals the caller may see (None: every one, admin)."""
        if ctx.who.role == "admin":
            return None
        rc = referrals.c
        conds = []
        scope = ctx.scope()
        if scope:
            conds.append(rc.patient_id.in_(scope))
        if ctx.who.user_id is not None:
            conds.append(rc.structure_id.in_(select(structure_members.c.structure_id).where(
                structure_members.c.user_id == ctx.who.user_id)))
        if ctx.who.professional_id:
            conds.append(rc.requester.like(
                f'%"professional_id": {json.dumps(ctx.who.professional_id)}%'))
        return or_(*conds) if conds else rc.id.is_(None)

    def _search(self, ctx: Context, query: SearchQuery, status_of: dict[str, str]
                ) -> tuple[int, list[dict[str, Any]]]:
        rc = referrals.c
        stmt = select(referrals).where(rc.tombstone.is_(False))
        visible = self._visibility(ctx)
        if visible is not None:
            stmt = stmt.where(visible)
        for c in query.get("_id"):
            stmt = stmt.where(rc.id.in_([i for i in (int_id(v, PREFIX) for v in c.values)
                                         if i is not None] or [-1]))
        for c in query.get("patient") + query.get("subject") + query.get("for"):
            ids = []
            for v in c.values:
                ref = reference_id(v, "Patient")
                pid = int_id(ref) if ref is not None else None
                if pid is not None and ctx.patient_exists(pid):
                    ids.append(ctx.survivor(pid))
            stmt = stmt.where(rc.patient_id.in_(self._with_absorbed(ctx, ids) or [-1]))
        for c in query.get("patient.identifier"):
            ids = []
            for v in c.values:
                system, value = token(v)
                if value:
                    found = identity.lookup(ctx.conn, authority_of(system or ""), value) \
                        if system else None
                    if found is not None:
                        ids.append(ctx.survivor(found))
            stmt = stmt.where(rc.patient_id.in_(self._with_absorbed(ctx, ids) or [-1]))
        for c in query.get("status"):
            wanted = {token(v)[1] for v in c.values}
            stmt = stmt.where(rc.status.in_([s for s, v in status_of.items() if v in wanted]
                                            or [""]))
        for c in query.get("identifier"):
            ors = []
            for v in c.values:
                system, value = token(v)
                cond = rc.identifier == value if value else rc.id.isnot(None)
                if system:
                    cond = cond & (rc.authority == authority_of(system))
                ors.append(cond)
            stmt = stmt.where(or_(*ors))
        for c in query.get("requester"):
            stmt = stmt.where(or_(*[rc.requester.like(f'%"{_bare(v)}"%') for v in c.values]))
        for name in ("performer", "owner"):
            for c in query.get(name):
                stmt = stmt.where(rc.structure_id.in_([_bare(v) for v in c.values]))
        for c in query.get("category"):
            if not any(token(v)[1] == REFERRAL["code"] and token(v)[0] in (None, SNOMED)
                       for v in c.values):
                stmt = stmt.where(rc.id.is_(None))
        for c in query.get("focus"):
            stmt = stmt.where(rc.id.in_([i for i in (
                int_id(reference_id(v, "ServiceRequest") or "", PREFIX) for v in c.values)
                if i is not None] or [-1]))
        for name, column in (("authored", rc.authored_at), ("authored-on", rc.authored_at),
                             ("_lastUpdated", rc.updated_at)):
            cond = date_condition(column, query.get(name))
            if cond is not None:
                stmt = stmt.where(cond)
        total, rows = paged(ctx, query, stmt, rc.id)
        return total, [self.service._detail(ctx.conn, r) for r in rows]  # noqa: SLF001

    @staticmethod
    def _with_absorbed(ctx: Context, ids: list[int]) -> list[int]:
        if not ids:
            return []
        merged = ctx.conn.execute(select(patients.c.id).where(
            patients.c.merged_into.in_(ids))).scalars().all()
        return sorted({*ids, *map(int, merged)})

    def search_requests(self, ctx: Context, query: SearchQuery) -> SearchResult:
        total, rows = self._search(ctx, query, wf.SERVICE_REQUEST_STATUS)
        return SearchResult(total, [service_request(ctx, r) for r in rows])

    def search_tasks(self, ctx: Context, query: SearchQuery) -> SearchResult:
        total, rows = self._search(ctx, query, TASK_STATUS)
        return SearchResult(total, [task(ctx, r) for r in rows])

    # writing -----------------------------------------------------------------------------

    def create_request(self, ctx: Context, resource: dict[str, Any]) -> dict[str, Any]:
        ev, patient_id = self._event(ctx, _valid(resource), "create")
        self.service.apply_hl7(ctx.conn, patient_id, ev, 0, datetime.now(UTC), source="fhir")
        rid = ctx.conn.execute(select(referrals.c.id).where(referrals.c.key == ev["key"])
                               ).scalar_one()
        row = ctx.conn.execute(select(referrals).where(referrals.c.id == rid)).mappings().one()
        return service_request(ctx, self.service._detail(ctx.conn, row))  # noqa: SLF001

    def update_request(self, ctx: Context, resource_id: str, resource: dict[str, Any],
                       if_match: str | None) -> tuple[dict[str, Any], bool]:
        current = self._current(ctx, resource_id, if_match, service_request)
        ev, patient_id = self._event(ctx, _valid(resource), "modify", current)
        target = _status_from_request(resource.get("status"), current["status"])
        try:
            # the details as an I13 would change them (the status stays), then the status
            # through the workflow, as the UI's buttons do
            self.service.apply_hl7(ctx.conn, patient_id,
                                   {**ev, "initial_status": current["status"]}, 0,
                                   datetime.now(UTC), source="fhir")
            if target != current["status"]:
                self._status(ctx, current["id"], target, None)
        except wf.TransitionError as exc:
            raise FhirError(422, str(exc), code="business-rule") from None
        return self.read_request(ctx, resource_id), False

    def patch_request(self, ctx: Context, resource_id: str, body: Any, content_type: str,
                      if_match: str | None) -> dict[str, Any]:
        current = self._current(ctx, resource_id, if_match, service_request)
        status, reason = _patched_status(body, content_type, "ServiceRequest")
        self._status(ctx, current["id"], _status_from_request(status, current["status"]),
                     reason)
        return self.read_request(ctx, resource_id)

    def update_task(self, ctx: Context, resource_id: str, resource: dict[str, Any],
                    if_match: str | None) -> tuple[dict[str, Any], bool]:
        reason = _valid(resource).get("statusReason")
        return self.patch_task(ctx, resource_id, [
            {"op": "replace", "path": "/status", "value": resource.get("status")},
            *([{"op": "replace", "path": "/statusReason", "value": reason}]
              if isinstance(reason, dict) else [])],
            "application/json-patch+json", if_match), False

    def patch_task(self, ctx: Context, resource_id: str, body: Any, content_type: str,
                   if_match: str | None) -> dict[str, Any]:
        current = self._current(ctx, resource_id, if_match, task)
        status, reason = _patched_status(body, content_type, "Task")
        self._status(ctx, current["id"], _status_from_task(status), reason)
        return self.read_task(ctx, resource_id)

    def _current(self, ctx: Context, resource_id: str, if_match: str | None,
                 build: Any) -> dict[str, Any]:
        """The referral a write applies to, once If-Match names its current version."""
        current = self._row(ctx, resource_id)
        _check_version(build(ctx, current), if_match)
        return current

    def _status(self, ctx: Context, referral_id: int, status: str, reason: str | None) -> None:
        try:
            _, wake = self.service.act_on(ctx.conn, ctx.who, referral_id, status,
                                          reason=reason)
        except NotFound:
            raise FhirError(404, f"{PREFIX}{referral_id} not found") from None
        except ValueError as exc:  # TransitionError included
            raise FhirError(422, str(exc), code="business-rule") from None
        # The delivery is visible once the router's transaction commits; waking the
        # partition now may find nothing, and then the sweeper sends it.
        self.service.wake(wake)

    # the request as sent ------------------------------------------------------------------

    def _event(self, ctx: Context, sr: dict[str, Any], action: str,
               current: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
        """The ServiceRequest in the shape of a REF event (`transformers/events/ref.py`)."""
        codings = [c for cat in sr.get("category") or [] if isinstance(cat, dict)
                   for c in cat.get("coding") or [] if isinstance(c, dict)]
        if not any(c.get("system") == SNOMED and c.get("code") == REFERRAL["code"]
                   for c in codings):
            raise FhirError(422, "only requests to support structures are written here: "
                                 "category must include SNOMED CT 3457005 (Patient referral)",
                            expression="ServiceRequest.category")
        ident = next((i for i in sr.get("identifier") or [] if isinstance(i, dict)
                      and i.get("system") and i.get("value")), None)
        if ident is None:
            raise FhirError(422, "ServiceRequest.identifier (system and value) is the "
                                 "request's key and is required",
                            expression="ServiceRequest.identifier")
        key_id = {"value": str(ident["value"]), "authority": authority_of(str(ident["system"]))}
        if current is not None and (key_id["value"], key_id["authority"]) != (
                current["identifier"], current["authority"]):
            raise FhirError(422, "ServiceRequest.identifier cannot change",
                            expression="ServiceRequest.identifier")
        status = sr.get("status")
        if action == "create" and status not in ("draft", "active"):
            raise FhirError(422, "a new request is draft or active",
                            expression="ServiceRequest.status")
        ref = reference_id(str((sr.get("subject") or {}).get("reference") or ""), "Patient")
        pid = int_id(ref) if ref is not None else None
        if pid is None or not ctx.patient_exists(pid):
            raise FhirError(422, "ServiceRequest.subject must reference a Patient of this "
                                 "server or of the transaction",
                            expression="ServiceRequest.subject")
        parties = _parties(ctx)
        rp = _party(sr.get("requester"), parties, "RP")
        rts = [_party(p, parties, "RT") for p in sr.get("performer") or []]
        rt = next((p for p in rts if p and p.get("structure_id")), None)
        if rt is None:
            raise FhirError(422, "ServiceRequest.performer must name a support structure "
                                 "(an Organization with a FINESS identifier)",
                            expression="ServiceRequest.performer")
        if not self.service_known(ctx, rt["structure_id"]):
            raise FhirError(422, f"performer {rt['structure_id']} is not a support structure "
                                 "known here", expression="ServiceRequest.performer")
        priority = sr.get("priority")
        reasons = [c for c in sr.get("reasonCode") or [] if isinstance(c, dict)]
        # a coded reason is a diagnosis (HL7 DG1), a text-only one the reason (RF1-10)
        reason = next((c["text"] for c in reasons if c.get("text") and not c.get("coding")),
                      None)
        diagnoses = [{"code": x.get("code"), "display": x.get("display"),
                      "system": x.get("system")} for c in reasons
                     for x in c.get("coding") or [] if isinstance(x, dict) and x.get("code")]
        ev = {
            "type": "referral", "key": f"{key_id['authority']}|{key_id['value']}",
            "action": action, "trigger": "FHIR", "id": key_id,
            "priority": {"code": PRIORITY_TO_0280[priority], "display": priority}
            if priority in PRIORITY_TO_0280 else None,
            "referral_type": {"display": (sr.get("code") or {}).get("text")}
            if (sr.get("code") or {}).get("text") else None,
            "reason": {"display": reason} if reason else None,
            "effective": sr.get("authoredOn"),
            "expires": (sr.get("occurrencePeriod") or {}).get("end"),
            "at": sr.get("authoredOn"),
            "providers": [p for p in (rp, rt) if p],
            "diagnoses": diagnoses, "notes": [n.get("text") for n in sr.get("note") or []
                                       if isinstance(n, dict) and n.get("text")],
            "observations": [], "requested": [],
        }
        if action == "create":
            ev["initial_status"] = wf.DRAFT if status == "draft" else wf.REQUESTED
        return ev, ctx.survivor(pid)

    @staticmethod
    def service_known(ctx: Context, structure_id: str) -> bool:
        return ctx.conn.execute(select(support_structures.c.id).where(
            support_structures.c.id == structure_id)).first() is not None

    # the Bundle's other entries ---------------------------------------------------------

    def create_patient(self, ctx: Context, resource: dict[str, Any]) -> dict[str, Any]:
        _valid(resource)
        ids = []
        for i in resource.get("identifier") or []:
            if not isinstance(i, dict) or not i.get("system") or not i.get("value"):
                continue
            authority = authority_of(str(i["system"]))
            ids.append({"value": str(i["value"]), "authority": authority, "namespace": "",
                        "type": "INS" if authority in INS_OIDS else "PI"})
        if not ids:
            raise FhirError(422, "Patient.identifier: an INS or a local identifier (system "
                                 "and value) is required", expression="Patient.identifier")
        name = next((n for n in resource.get("name") or [] if isinstance(n, dict)), {})
        gender = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
        block = {"identifiers": ids, "withdrawn": [], "cleared": [], "identity_status": None,
                 "ins_usable": True, "family": name.get("family"),
                 "given": (name.get("given") or [None])[0],
                 "birth_date": (resource.get("birthDate") or "").replace("-", "")[:8] or None,
                 "sex": gender.get(str(resource.get("gender"))), "death": False}
        pid = identity.resolve(ctx.conn, block, 0)
        out = {"resourceType": "Patient", "id": str(pid),
               "identifier": [{"system": system_of(i["authority"]), "value": i["value"]}
                              for i in ids]}
        return finish(out, datetime.now(UTC))

    def create_party(self, ctx: Context, resource: dict[str, Any]) -> dict[str, Any]:
        kind = _valid(resource)["resourceType"]
        body = {k: v for k, v in resource.items() if k not in ("id", "meta")}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        out = finish({**body, "id": f"{PREFIX}{digest}"}, datetime.now(UTC))
        _parties(ctx)[f"{kind}/{out['id']}"] = out
        return out


def _valid(resource: Any) -> dict[str, Any]:
    """What a client sent, checked against its R4 type first: a malformed resource is the
    client's 422, never a server error."""
    try:
        checked(resource)
    except InvalidResource:  # its text may quote the values sent: not in an outcome
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        raise FhirError(422, f"the {kind or 'resource'} is not valid FHIR R4 (an element "
                             "of the wrong type, unknown, or a required one missing)",
                        code="structure") from None
    return resource


def _bare(value: str) -> str:
    """`system|value`, `Type/id` or a plain value → the value compared with the store."""
    system, code = token(value)
    return (code or "").rsplit("/", 1)[-1] if system is not None else value.rsplit("/", 1)[-1]


def _parties(ctx: Context) -> dict[str, dict[str, Any]]:
    """The Practitioners/Organizations created earlier in this transaction."""
    found: dict[str, dict[str, Any]] | None = ctx.__dict__.get("referral_parties")
    if found is None:
        found = ctx.__dict__["referral_parties"] = {}
    return found


def _identifiers(res: dict[str, Any]) -> list[dict[str, str]]:
    return [{"system": str(i.get("system") or ""), "value": str(i["value"])}
            for i in res.get("identifier") or [] if isinstance(i, dict) and i.get("value")]


def _party(ref: Any, parties: dict[str, dict[str, Any]], role: str) -> dict[str, Any] | None:
    """A requester/performer (reference to an entry, or an inline identifier) as a PRD."""
    if not isinstance(ref, dict):
        return None
    out: dict[str, Any] = {"role": role, "family": "", "given": "", "organisation": None,
                           "identifiers": [], "professional_id": None, "structure_id": None}

    def person(res: dict[str, Any]) -> None:
        name = next((n for n in res.get("name") or [] if isinstance(n, dict)), {})
        out["family"] = name.get("family") or ""
        out["given"] = (name.get("given") or [""])[0]
        for i in _identifiers(res):
            out["identifiers"].append({"value": i["value"], "type": "RPPS" if i["system"]
                                       == RPPS else "ADELI" if i["system"] == ADELI else ""})
            out["professional_id"] = out["professional_id"] or i["value"]

    def organisation(res: dict[str, Any]) -> None:
        out["organisation"] = res.get("name") or out["organisation"]
        for i in _identifiers(res):
            value = i["value"]
            if i["system"] == IDNST and value[:1] == "1":
                value = value[1:]  # idNatSt = 1 + FINESS
            if i["system"] in (FINESS, IDNST):
                out["identifiers"].append({"value": value, "type": "FINESS"})
                out["structure_id"] = out["structure_id"] or value
        if role == "RT" and not out["family"]:
            out["family"] = res.get("name") or ""

    target = parties.get(str(ref.get("reference") or ""))
    if target is not None:
        kind = target["resourceType"]
        if kind == "Practitioner":
            person(target)
        elif kind == "Organization":
            organisation(target)
        elif kind == "PractitionerRole":
            for key, fill in (("practitioner", person), ("organization", organisation)):
                linked = parties.get(str((target.get(key) or {}).get("reference") or ""))
                if linked is not None:
                    fill(linked)
    elif isinstance(ref.get("identifier"), dict):
        i = ref["identifier"]
        wrapped = {"identifier": [i], "name": ref.get("display")}
        if i.get("system") in (FINESS, IDNST):
            organisation(wrapped)
        else:
            person({"identifier": [i], "name": [{"family": ref.get("display") or ""}]})
    else:
        return None
    return out


def _status_from_request(status: Any, current: str) -> str:
    """ServiceRequest.status asked → the workflow status it means here."""
    if status == wf.SERVICE_REQUEST_STATUS[current]:
        return current
    if status == "active":
        return wf.IN_PROGRESS if current == wf.ON_HOLD else wf.REQUESTED
    target = wf.FROM_SERVICE_REQUEST.get(str(status))
    if target is None:
        raise FhirError(422, f"ServiceRequest.status {status!r} cannot be set on a request "
                             "(draft, active, on-hold, revoked, completed)",
                        expression="ServiceRequest.status")
    return target


def _status_from_task(status: Any) -> str:
    if status not in wf.TRANSITIONS:
        raise FhirError(422, f"Task.status {status!r} is not a status of this workflow "
                             f"({', '.join(wf.STATUSES)})", expression="Task.status")
    return str(status)


def _patched_status(body: Any, content_type: str, kind: str) -> tuple[Any, str | None]:
    """The status (and status reason) a PATCH sets; anything else is refused.

    JSON Patch (RFC 6902, `application/json-patch+json`): `replace` of `/status`
    (and `/statusReason/text`); FHIRPath Patch (FHIR R4 fhirpatch.html, a Parameters
    resource): `replace` of `<Type>.status` with a valueCode."""
    status: Any = None
    reason: str | None = None
    if content_type == "application/json-patch+json" or isinstance(body, list):
        if not isinstance(body, list):
            raise FhirError(400, "a JSON Patch body is a list of operations")
        for op in body:
            if not isinstance(op, dict) or op.get("op") not in ("replace", "add"):
                raise FhirError(422, "only replace of /status is supported")
            if op.get("path") == "/status":
                status = op.get("value")
            elif op.get("path") in ("/statusReason/text", "/statusReason"):
                value = op.get("value")
                reason = value.get("text") if isinstance(value, dict) else value
            else:
                raise FhirError(422, f"only /status can be patched (not {op.get('path')})")
    else:
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise FhirError(400, "a FHIRPath Patch body is a Parameters resource")
        for param in body.get("parameter") or []:
            parts = {p.get("name"): p for p in param.get("part") or [] if isinstance(p, dict)}
            kind_ok = (parts.get("type") or {}).get("valueCode") == "replace"
            path = (parts.get("path") or {}).get("valueString")
            if not kind_ok or path != f"{kind}.status":
                raise FhirError(422, f"only replace of {kind}.status is supported")
            status = (parts.get("value") or {}).get("valueCode")
    if status is None:
        raise FhirError(422, "the patch sets no status")
    return status, reason


def _check_version(resource: dict[str, Any], if_match: str | None) -> None:
    if not if_match:
        return
    wanted = if_match.strip().removeprefix("W/").strip('"')
    if wanted != version_of(resource) and wanted != (resource.get("meta") or {}).get(
            "versionId"):
        raise FhirError(412, "If-Match does not name the current version")


def register(registry: Registry, service: Referrals) -> None:
    h = ReferralFhir(service)
    common = (SearchParam("_id", "token", "logical id (dac-N)"),
              SearchParam("patient", "reference", "the patient (Patient/id)"),
              SearchParam("patient.identifier", "token", "the patient's INS or local id"),
              SearchParam("status", "token", "the status"),
              SearchParam("requester", "reference", "RPPS or FINESS of the requester",
                          modifiers=("identifier",)),
              SearchParam("_lastUpdated", "date", "when the request last changed"))
    registry.register(Provider(
        "ServiceRequest", "dac.referral", read=h.read_request, search=h.search_requests,
        params=(*common, SearchParam("authored", "date", "when the request was sent"),
                SearchParam("performer", "reference", "FINESS of the support structure",
                            modifiers=("identifier",)),
                SearchParam("identifier", "token", "the requester's referral id"),
                SearchParam("category", "token", "SNOMED CT 3457005")),
        id_prefix=PREFIX, create=h.create_request, update=h.update_request,
        patch=h.patch_request, profiles=PROFILES_SR,
        documentation="Requests to support structures (DAC referrals, issue #14)"))
    registry.register(Provider(
        "Task", "dac.task", read=h.read_task, search=h.search_tasks,
        params=(*common, SearchParam("focus", "reference", "the ServiceRequest"),
                SearchParam("owner", "reference", "FINESS of the support structure",
                            modifiers=("identifier",)),
                SearchParam("authored-on", "date", "when the request was sent")),
        id_prefix=PREFIX, update=h.update_task, patch=h.patch_task, profiles=PROFILES_TASK,
        documentation="The support structure's workflow on a request (focus)"))
    for kind, create in (("Patient", h.create_patient), ("Practitioner", h.create_party),
                         ("PractitionerRole", h.create_party), ("Organization",
                                                                h.create_party)):
        registry.register(Provider(kind, f"dac.{kind.lower()}-intake", id_prefix=PREFIX,
                                   create=create, documentation="create, for the entries of "
                                                                "a referral Bundle"))
