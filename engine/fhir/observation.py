"""Observation: one lab result (OBX) of the timeline, as the LOINC normaliser left it.

- `code`: the LOINC coding (`http://loinc.org`), then the laboratory's own code as the
  second coding (brief "Clarifications": the code and unit it arrived with are kept).
- `valueQuantity` in UCUM (`http://unitsofmeasure.org`) for normalised results, in the
  canonical unit of the analyte; a result kept as received carries its value and unit as
  sent (no UCUM system claimed), or `valueString`.
- `referenceRange` converted with the value; `interpretation` from OBX-8 (HL7 table 0078
  codes are the v3 ObservationInterpretation codes); `performer` = the laboratory;
  `status` from OBX-11 (HL7 table 0085).
- A deleted result answers 410; masking follows the result's event (docs/timeline.md).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_, select

from engine.fhir.context import Context
from engine.fhir.events import event_columns, row_for_read
from engine.fhir.model import finish, instant
from engine.fhir.registry import Provider, Registry, SearchParam, SearchResult
from engine.fhir.search import SearchQuery, date_order, int_id, narrowed, paged, token
from engine.timeline.models import observations, timeline_events

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
LOCAL_SYSTEM = "urn:x-parcours:code-system:"  # + the OBX-3.3 coding system of the sender
PROFILE = "http://hl7.org/fhir/StructureDefinition/Observation"
# HL7 v2.5.1 table 0085 (OBX-11) → FHIR observation-status
STATUSES = {"F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary",
            "S": "preliminary", "I": "registered", "O": "registered", "X": "cancelled",
            "D": "entered-in-error", "W": "entered-in-error", "U": "final", "A": "amended"}
INTERPRETATIONS = {"N", "H", "L", "A", "HH", "LL", "AA", "HU", "LU", "<", ">", "I", "R",
                   "S", "POS", "NEG", "IND", "E", "W", "U", "D", "B"}

PARAMS = (
    SearchParam("_id", "token", "logical id"),
    SearchParam("patient", "reference", "the patient (Patient/id)"),
    SearchParam("code", "token", "LOINC (http://loinc.org|code) or the laboratory's code"),
    SearchParam("category", "token", "laboratory"),
    SearchParam("date", "date", "when observed"),
    SearchParam("_lastUpdated", "date", "when the result last changed"),
)


def system_uri(v2_system: str | None) -> str:
    """HL7 table 0396 coding system of OBX-3.3 → a FHIR system URI."""
    if (v2_system or "").upper() in ("LN", "LOINC"):
        return LOINC
    return LOCAL_SYSTEM + (v2_system or "L")


def _number(text: Any) -> float | None:
    try:
        return float(str(text).replace(",", "."))
    except (TypeError, ValueError):
        return None


def _quantity(value: float, unit: str | None, ucum: bool) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value}
    if unit:
        q["unit"] = unit
        if ucum:
            q["system"], q["code"] = UCUM, unit
    return q


def resource(ctx: Context, o: dict[str, Any]) -> dict[str, Any]:
    normalised = o["outcome"] == "normalised"
    codings = []
    if o["loinc"]:
        codings.append({"system": LOINC, "code": o["loinc"],
                        **({"display": o["display"]} if o["display"] else {})})
    if o["original_code"] and not (o["original_code"] == o["loinc"]
                                   and system_uri(o["original_system"]) == LOINC):
        codings.append({"system": system_uri(o["original_system"]),
                        "code": o["original_code"]})
    out: dict[str, Any] = {
        "resourceType": "Observation", "id": str(o["id"]),
        "status": STATUSES.get(o["status"] or "", "unknown"),
        "category": [{"coding": [{"system": CATEGORY, "code": "laboratory",
                                  "display": "Laboratory"}]}],
        "code": {"coding": codings, **({"text": o["display"]} if o["display"] else {})},
        "subject": ctx.patient_ref(int(o["patient_id"])),
    }
    if not codings:
        out["code"] = {"text": o["display"] or "result"}
    when = o["observed_at"] or o.get("event_at")
    if when is not None:
        out["effectiveDateTime"] = instant(when)
    if o["performing_lab"]:
        out["performer"] = [{"display": o["performing_lab"]}]
    number = o["value_num"] if o["value_num"] is not None else (
        _number(o["value_text"]) if o["value_text"] else None)
    if number is not None:
        out["valueQuantity"] = _quantity(number, o["unit"], normalised)
        if o["comparator"] in ("<", "<=", ">=", ">"):
            out["valueQuantity"]["comparator"] = o["comparator"]
    elif o["value_text"]:
        out["valueString"] = o["value_text"]
    low, high = _number(o["reference_low"]), _number(o["reference_high"])
    if low is not None or high is not None:
        rng: dict[str, Any] = {}
        if low is not None:
            rng["low"] = _quantity(low, o["unit"], normalised)
        if high is not None:
            rng["high"] = _quantity(high, o["unit"], normalised)
        out["referenceRange"] = [rng]
    flag = (o["abnormal_flag"] or "").upper()
    if flag in INTERPRETATIONS:
        out["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": flag}]}]
    if normalised and (o["original_value"] or o["original_unit"]):
        out["note"] = [{"text": "as received: " + " ".join(
            x for x in (o["original_value"], o["original_unit"]) if x)}]
    return finish(out, o.get("updated_at"), (PROFILE,))


def _select() -> Any:
    return select(observations, *event_columns()).join(
        timeline_events, timeline_events.c.id == observations.c.event_id)


def read(ctx: Context, resource_id: str) -> dict[str, Any]:
    oid = int_id(resource_id)
    stmt = _select().where(observations.c.id == (oid if oid is not None else -1))
    row = ctx.conn.execute(stmt).mappings().first()
    gone = row is not None and (row["deleted"] or row["event_status"] != "active")
    row = row_for_read(ctx, stmt, f"Observation/{resource_id}", gone=gone)
    return resource(ctx, row)


def _code_match(value: str) -> Any:
    system, code = token(value)
    o = observations.c
    if system is None:
        return or_(o.loinc == code, o.original_code == code) if code else None
    if system == LOINC:
        return o.loinc == code if code else o.loinc.is_not(None)
    if system.startswith(LOCAL_SYSTEM):
        local = system[len(LOCAL_SYSTEM):]
        cond = o.original_system == local
        return and_(cond, o.original_code == code) if code else cond
    return None  # a system we never emit matches nothing


def filtered(ctx: Context, query: SearchQuery) -> Any | None:
    """The SELECT of the observations the search matches, or None for no match at all."""
    o, ev = observations.c, timeline_events.c
    stmt = narrowed(ctx, query, _select().where(
        o.deleted.is_(False), ev.status == "active",
        ctx.masking_clause(ev.masked_ps, ev.confidentiality, ev.author_id, o.patient_id)),
        o.patient_id, o.id, {"date": o.observed_at, "_lastUpdated": ev.updated_at})
    if stmt is None:
        return None
    for c in query.get("code"):
        matches = [m for m in map(_code_match, c.values) if m is not None]
        if not matches:
            return None
        stmt = stmt.where(or_(*matches))
    for c in query.get("category"):
        if not any(token(v)[1] == "laboratory" and token(v)[0] in (None, CATEGORY)
                   for v in c.values):
            return None
    return stmt


def search(ctx: Context, query: SearchQuery) -> SearchResult:
    stmt = filtered(ctx, query)
    if stmt is None:
        return SearchResult(0, [])
    o = observations.c
    # newest first by default: the index's order (migration 0011_fhir), a page stops early
    total, rows = paged(ctx, query, stmt, *date_order(query, o.observed_at, o.id, True))
    return SearchResult(total, [resource(ctx, r) for r in rows
                                if ctx.visible(r, int(r["patient_id"]))])


def register(registry: Registry) -> None:
    registry.register(Provider(
        "Observation", "timeline.observation", read=read, search=search, params=PARAMS,
        sorts=("date", "-date"), profiles=(PROFILE,),
        documentation="Laboratory results (OBX), LOINC-normalised, original coding kept"))
