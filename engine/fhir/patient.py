"""Patient (FR Core Patient / Patient INS) from the timeline's patients and identifiers.

FR Core (Interop'Santé, hl7.fr/ig/fhir/core 2.x) and the RNIV rules:
- The INS (matricule INS) is conveyed only for a qualified identity (PID-32 VALI/QUAL):
  slice by system — NIR `urn:oid:1.2.250.1.213.1.4.8` (INS-NIR), NIA `…4.9` (INS-NIA), test
  NIR `…4.10` (INS-NIR-TEST), demo `…4.11` (INS-NIR-DEMO) — with `use` official (the current
  INS; any earlier INS held is `old`) and the type from fr-core-cs-v2-0203. So a Patient has
  at most one `official` identifier.
- Local ids (IPP) are `PI` (HL7 table 0203) with their assigning authority: the OID
  (CX-4.2) as `urn:oid:` system, the namespace (CX-4.1) as `assigner.display`.
- Identity reliability (PID-32) in the FR Core identity-reliability extension.
- A patient absorbed by a merge (A40/A47) is not served (410, naming its survivor); the
  survivor lists it in `link` type `replaces`.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import and_, exists, func, or_, select

from engine.fhir.context import Context
from engine.fhir.model import finish
from engine.fhir.outcome import FhirError
from engine.fhir.registry import Provider, Registry, SearchParam, SearchResult
from engine.fhir.search import SearchQuery, date_condition, date_range, int_id, paged, token
from engine.timeline.models import patient_identifiers, patients

FR_CORE = "https://hl7.fr/ig/fhir/core"
PROFILE = f"{FR_CORE}/StructureDefinition/fr-core-patient"
PROFILE_INS = f"{FR_CORE}/StructureDefinition/fr-core-patient-ins"
IDENTIFIER_TYPES = f"{FR_CORE}/CodeSystem/fr-core-cs-v2-0203"
RELIABILITY = f"{FR_CORE}/StructureDefinition/fr-core-identity-reliability"
RELIABILITY_CODES = f"{FR_CORE}/CodeSystem/fr-core-cs-v2-0445"  # HL7 table 0445, FR codes
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
INS_SLICES = {"1.2.250.1.213.1.4.8": "INS-NIR", "1.2.250.1.213.1.4.9": "INS-NIA",
              "1.2.250.1.213.1.4.10": "INS-NIR-TEST", "1.2.250.1.213.1.4.11": "INS-NIR-DEMO"}
QUALIFIED = ("VALI", "QUAL")  # RNIV: identité qualifiée
GENDERS = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other",
           "N": "unknown"}
V2_ID_TYPES = {"PI", "MR", "AN", "PN", "PT", "PPN", "NH", "NI", "RRI"}
_OID = re.compile(r"^[0-2](\.\d+)+$")

PARAMS = (
    SearchParam("_id", "token", "logical id"),
    SearchParam("identifier", "token", "system|value: INS (urn:oid:1.2.250.1.213.1.4.8…) or "
                "a local id (urn:oid:<authority OID> or the authority's name)"),
    SearchParam("family", "string", "family name, starts with (case-insensitive)",
                ("exact", "contains")),
    SearchParam("given", "string", "given name, starts with (case-insensitive)",
                ("exact", "contains")),
    SearchParam("birthdate", "date", "date of birth"),
    SearchParam("gender", "token", "male | female | other | unknown"),
    SearchParam("_lastUpdated", "date", "when the record last changed"),
)


def _birth_date(value: str | None) -> str | None:
    """HL7 v2 DT (YYYY[MM[DD]]) → FHIR date (YYYY[-MM[-DD]])."""
    if not value or not value[:4].isdigit():
        return None
    v = value[:8]
    return "-".join(p for p in (v[:4], v[4:6], v[6:8]) if p)


def _identifier(row: dict[str, Any], current_ins: str | None, qualified: bool
                ) -> dict[str, Any] | None:
    authority = row["authority"] or ""
    if row["type"] == "INS":
        slice_ = INS_SLICES.get(authority)
        if slice_ is None or not qualified:
            return None  # RNIV: no INS without a qualified identity
        return {"use": "official" if row["value"] == current_ins else "old",
                "type": {"coding": [{"system": IDENTIFIER_TYPES, "code": slice_}]},
                "system": f"urn:oid:{authority}", "value": row["value"]}
    kind = row["type"] if row["type"] in V2_ID_TYPES else "PI"
    out: dict[str, Any] = {"use": "usual", "type": {"coding": [{"system": V2_0203,
                                                                  "code": kind}]},
                           "value": row["value"]}
    if _OID.match(authority):
        out["system"] = f"urn:oid:{authority}"
    name = row["namespace"] or (authority if not _OID.match(authority) else None)
    if name:
        out["assigner"] = {"display": name}
    return out


def resource(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    pid = int(p["id"])
    ids = ctx.conn.execute(select(patient_identifiers).where(
        patient_identifiers.c.patient_id == pid).order_by(patient_identifiers.c.id)
    ).mappings().all()
    qualified = (p["identity_status"] or "") in QUALIFIED
    identifiers = [i for i in (_identifier(dict(r), p["ins"], qualified) for r in ids) if i]
    merged = ctx.conn.execute(select(patients.c.id).where(patients.c.merged_into == pid)
                              .order_by(patients.c.id)).scalars().all()
    ctx.shown.add(pid)
    out: dict[str, Any] = {"resourceType": "Patient", "id": str(pid), "active": True}
    if p["identity_status"]:
        out["extension"] = [{"url": RELIABILITY, "extension": [{
            "url": "identityStatus", "valueCoding": {"system": RELIABILITY_CODES,
                                                     "code": p["identity_status"]}}]}]
    if identifiers:
        out["identifier"] = identifiers
    if p["family"] or p["given"]:
        name: dict[str, Any] = {"use": "official"}
        if p["family"]:
            name["family"] = p["family"]
        if p["given"]:
            name["given"] = p["given"].split()
        out["name"] = [name]
    if p["sex"] in GENDERS:
        out["gender"] = GENDERS[p["sex"]]
    birth = _birth_date(p["birth_date"])
    if birth:
        out["birthDate"] = birth
    if merged:
        out["link"] = [{"other": {"reference": f"Patient/{m}"}, "type": "replaces"}
                       for m in merged]
    profiles = (PROFILE, PROFILE_INS) if qualified and any(
        i.get("use") == "official" for i in identifiers) else (PROFILE,)
    return finish(out, p["updated_at"], profiles)


def read(ctx: Context, resource_id: str) -> dict[str, Any]:
    pid = int_id(resource_id)
    row = None if pid is None else ctx.conn.execute(
        select(patients).where(patients.c.id == pid)).mappings().first()
    if row is None:
        raise FhirError(404, f"Patient/{resource_id} not found")
    if row["merged_into"] is not None:
        target = ctx.survivor(int(row["id"]))
        ctx.readable(target, f"Patient/{resource_id}")
        ctx.shown.add(target)
        raise FhirError(410, f"Patient/{resource_id} was merged: replaced-by Patient/{target}",
                        code="deleted")
    ctx.readable(int(row["id"]), f"Patient/{resource_id}")
    return resource(ctx, dict(row))


def _string(column: Any, criteria: list[Any]) -> Any:
    ands = []
    for c in criteria:
        ors = []
        for v in c.values:
            if c.modifier == "exact":
                ors.append(column == v)
            elif c.modifier == "contains":
                ors.append(func.lower(column).contains(v.lower(), autoescape=True))
            else:
                ors.append(func.lower(column).startswith(v.lower(), autoescape=True))
        ands.append(or_(*ors))
    return and_(*ands)


def _identifier_match(value: str) -> Any:
    system, code = token(value)
    pi = patient_identifiers.c
    conds = [pi.patient_id == patients.c.id]
    if code is not None:
        conds.append(pi.value == code)
    if system:
        authority = system.removeprefix("urn:oid:")
        conds.append(or_(pi.authority == authority, pi.namespace == authority))
    elif system == "":
        return None  # identifiers always have an authority
    return exists().where(*conds)


def _birthdate(criteria: list[Any]) -> Any:
    """birth_date is an HL7 DT string (YYYYMMDD): compared as strings over the range."""
    col = patients.c.birth_date
    ands = []
    for c in criteria:
        ors = []
        for v in c.values:
            prefix, start, end = date_range(v, c.name)
            lo, hi = start.strftime("%Y%m%d"), end.strftime("%Y%m%d")
            ors.append({"eq": and_(col >= lo, col < hi), "ne": or_(col < lo, col >= hi),
                        "gt": col >= hi, "sa": col >= hi, "ge": col >= lo, "lt": col < lo,
                        "eb": col < lo, "le": col < hi}[prefix])
        ands.append(or_(*ors))
    return and_(*ands)


def search(ctx: Context, query: SearchQuery) -> SearchResult:
    stmt = select(patients).where(patients.c.merged_into.is_(None))
    scope = ctx.scope()
    if scope is not None:
        stmt = stmt.where(patients.c.id.in_(scope))
    for c in query.get("_id"):
        stmt = stmt.where(patients.c.id.in_([i for i in map(int_id, c.values) if i]))
    for c in query.get("identifier"):
        matches = [m for m in map(_identifier_match, c.values) if m is not None]
        stmt = stmt.where(or_(*matches) if matches else patients.c.id.is_(None))
    if query.get("family"):
        stmt = stmt.where(_string(patients.c.family, query.get("family")))
    if query.get("given"):
        stmt = stmt.where(_string(patients.c.given, query.get("given")))
    if query.get("birthdate"):
        stmt = stmt.where(_birthdate(query.get("birthdate")))
    for c in query.get("gender"):
        codes = [k for v in c.values for k, g in GENDERS.items() if g == token(v)[1]]
        stmt = stmt.where(patients.c.sex.in_(codes))
    cond = date_condition(patients.c.updated_at, query.get("_lastUpdated"))
    if cond is not None:
        stmt = stmt.where(cond)
    total, rows = paged(ctx, query, stmt, patients.c.id)
    return SearchResult(total, [resource(ctx, r) for r in rows])


def register(registry: Registry) -> None:
    registry.register(Provider(
        "Patient", "timeline.patient", read=read, search=search, params=PARAMS,
        profiles=(PROFILE, PROFILE_INS),
        documentation="Patients of the coordination timeline (FR Core)"))
