"""The UI's one door to the timeline's users, care circle and audit log (issue #5).

Why an adapter: the pages ask a handful of questions (who is this token, is the user still
active, record a read, find patients, read a timeline and a series) and should not depend on
how engine/timeline/ spells them. Every answer comes from engine.timeline — its token and
OIDC verification (`Authenticator`), its access rule (`Timeline.read_*` check the role and
the care circle, apply masking, and audit allowed and denied reads) and its append-only
audit log. Nothing here decides access on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

if TYPE_CHECKING:
    from engine.api.port import EngineView
    from engine.timeline import Timeline
    from engine.timeline.auth import Principal as TimelinePrincipal
    from engine.ui.session import Session


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    role: str
    professional_id: str | None = None
    via: str = "token"


def _timeline(engine: EngineView) -> Timeline:
    timeline: Timeline | None = getattr(engine, "timeline", None)
    if timeline is None:
        raise RuntimeError("the timeline (engine.timeline, issue #5) is not installed")
    return timeline


def authenticate(engine: EngineView, username: str, token: str, remote: str) -> Principal | None:
    """The timeline's verification of an opaque token or an OIDC JWT; when a user name is
    typed it must be the token's (a token alone is enough)."""
    from engine.timeline import audit
    from engine.timeline.auth import Refusal

    timeline = _timeline(engine)
    who = timeline.auth.identify(token)
    if not isinstance(who, Refusal) and username and username != who.username:
        who = Refusal(username, "wrong_user", who.via)
    if isinstance(who, Refusal):
        # Issue #17: failed sign-ins are audited (claimed identity, reason), never the token.
        if who.claimed in ("unknown", "anonymous") and username:
            who = Refusal(username, who.reason, who.via)
        audit.record_refusal(timeline.db, who, remote, "/ui/login")
        return None
    return Principal("" if who.user_id is None else str(who.user_id), who.username, who.role,
                     who.professional_id, who.via)


def principal(session: Session) -> TimelinePrincipal:
    """The timeline's Principal for a signed-in session (what its access rule takes)."""
    from engine.timeline.auth import Principal as TP

    return TP(int(session.user_id) if session.user_id.isdigit() else None, session.username,
              session.role, session.professional_id, session.via)


def still_valid(engine: EngineView, session: Session) -> bool:
    """A user deactivated or given another role since sign-in loses the session at once.
    An OIDC user without a users row is bounded by the session lifetime only."""
    if not session.user_id.isdigit():
        return True
    from engine.timeline.models import users

    with _timeline(engine).db.connect() as conn:
        row = conn.execute(select(users.c.active, users.c.role)
                           .where(users.c.id == int(session.user_id))).first()
    return row is not None and bool(row.active) and row.role == session.role


def _patient_ids(engine: EngineView, keys: list[str]) -> list[int]:
    """Timeline patients behind intake patient keys ("authority|id", "INS|nir")."""
    from engine.timeline.identity import survivor
    from engine.timeline.models import patient_identifiers as pi

    found: set[int] = set()
    with _timeline(engine).db.connect() as conn:
        for key in keys:
            authority, _, value = key.rpartition("|")
            q = select(pi.c.patient_id).where(pi.c.value == value)
            if authority == "INS":
                q = q.where(pi.c.type == "INS")
            elif authority:
                parts = [p for p in authority.split("&") if p]
                q = q.where(pi.c.authority.in_(parts) | pi.c.namespace.in_(parts))
            for pid in conn.execute(q).scalars():
                found.add(survivor(conn, int(pid)))
    return sorted(found)


def audit_many(engine: EngineView, session: Session, patient_keys: list[str], what: str,
               remote: str, detail: dict[str, Any] | None = None,
               outcome: str = "allowed") -> None:
    """An operator page showed message data of these patients: one audit row per patient
    known to the timeline; the intake keys are kept in the detail (some messages name
    patients the timeline never saw)."""
    from engine.timeline import audit

    ids = _patient_ids(engine, patient_keys) if patient_keys else []
    audit.record(_timeline(engine).db, principal(session), what, patient_ids=ids or None,
                 remote=remote, outcome=outcome,
                 detail={**(detail or {}), "patient_keys": patient_keys})


def break_glass_open(engine: EngineView, username: str, message_id: int, action: str,
                    seconds: float) -> bool:
    """Did this user break the glass on this message within `seconds`? The audit row of the
    act is the grant (append-only), so a grant survives a restart and every engine process
    serving the UI agrees: there is no second record that could say otherwise."""
    from engine.timeline.models import audit_log

    since = datetime.now(UTC) - timedelta(seconds=seconds)
    with _timeline(engine).db.connect() as conn:
        details = conn.execute(select(audit_log.c.detail).where(
            audit_log.c.at >= since, audit_log.c.actor == username,
            audit_log.c.action == action, audit_log.c.outcome == "break_glass")).scalars()
        return any(_names_message(d, message_id) for d in details)


def _names_message(detail: str | None, message_id: int) -> bool:
    try:
        return json.loads(detail or "{}").get("message_id") == message_id
    except (ValueError, AttributeError):
        return False


def audit_patients(engine: EngineView, session: Session, patient_ids: list[int], what: str,
                   remote: str, detail: dict[str, Any] | None = None) -> None:
    """An operator page showed data of these timeline patients (conflict evidence)."""
    from engine.timeline import audit

    audit.record(_timeline(engine).db, principal(session), what,
                 patient_ids=patient_ids or None, remote=remote, detail=detail or {})


def audit_action(engine: EngineView, session: Session, what: str, remote: str,
                 detail: dict[str, Any] | None = None) -> None:
    from engine.timeline import audit

    audit.record(_timeline(engine).db, principal(session), what, patient_ids=None,
                 remote=remote, detail=detail or {})


# -- clinician reads (each one checked and audited by the timeline) ---------------------------


def _date(value: str | None) -> str:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


# Clinicians read times in the local time of the region (France métropolitaine), with the
# zone written beside them (CET/CEST) so nobody wonders whether a time is UTC.
LOCAL_ZONE = ZoneInfo("Europe/Paris")


def _when(value: Any) -> str:
    if not value:
        return ""
    try:
        ts = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)  # the timeline stores UTC
    return ts.astimezone(LOCAL_ZONE).strftime("%Y-%m-%d %H:%M %Z")


def _patient(summary: dict[str, Any]) -> dict[str, Any]:
    name = " ".join(x for x in (summary.get("family"), summary.get("given")) if x)
    return {"id": summary["id"], "name": name or f"Patient {summary['id']}",
            "birth_date": _date(summary.get("birth_date")), "sex": summary.get("sex") or "",
            "ins_status": summary.get("identity_status") or "",
            "identifiers": [f"{i['type']} {i['namespace'] or i['authority']}|{i['value']}"
                            for i in summary.get("identifiers", [])]}


def find_patients(engine: EngineView, session: Session, identifier: str,
                  remote: str) -> list[dict[str, Any]] | None:
    """Patients the user may read; None when the role may read no patient at all."""
    from engine.timeline import Denied

    try:
        found = _timeline(engine).find_patients(principal(session), identifier, remote)
    except Denied:
        return None
    return [_patient(p) for p in found]


_DETAIL_KEYS = {
    "stay": ("location", "medical_ward", "patient_class", "admitted_at", "discharged_at",
             "visit_number"),
    "movement": ("location", "medical_ward", "nursing_ward", "patient_class"),
    "document": ("type_code", "author"),
    "order": ("prescriber", "placer", "status"),
    "appointment": ("start", "end", "service", "reason", "location"),
    "result": ("status",),
    "referral": ("status", "reason", "note", "coordinator"),
}


def _event(e: dict[str, Any]) -> dict[str, Any]:
    data = e.get("data") or {}
    details = []
    for k in _DETAIL_KEYS.get(e["type"], ()):
        v = data.get(k)
        if v and not isinstance(v, (dict, list)):
            shown = _when(v) if k.endswith(("_at", "start", "end")) else v
            details.append(f"{k.replace('_', ' ')}: {shown}")
    obs = []
    for o in e.get("observations", []):
        orig = o.get("original") or {}
        value = o.get("value") if o.get("value") is not None else o.get("value_text")
        original = ""
        if orig.get("value") is not None and (str(orig.get("value")) != str(value)
                                              or (orig.get("unit") or "") != (o.get("unit") or "")):
            original = f"{orig.get('value')} {orig.get('unit') or ''}".strip()
        obs.append({"loinc": o.get("loinc") if o.get("outcome") == "normalised" else None,
                    "label": o.get("display") or orig.get("code") or "?",
                    "value": f"{o.get('comparator') or ''}{value if value is not None else ''}",
                    "unit": o.get("unit") or "", "original": original,
                    "flag": "" if (o.get("abnormal_flag") or "N") == "N" else o["abnormal_flag"],
                    "lab": o.get("performing_lab")})
    source = ""
    if e["type"] == "result":
        # "Bilan" alone does not say from where: the laboratory that performed it does.
        labs = list(dict.fromkeys(o["lab"] for o in obs if o.get("lab")))
        source = ", ".join(labs) or str(e.get("facility") or data.get("facility") or "")
    return {"kind": e["type"], "at": _when(e.get("at")), "title": e.get("title") or e["type"],
            "cancelled": e.get("status") in ("cancelled", "deleted", "replaced"),
            "flag": "possibly redundant" if e.get("possibly_redundant") else "",
            "dmp": _dmp_pill(e.get("dmp")),
            "source": source, "details": details, "observations": obs}


_DMP_STATES = {  # state → (text, pill class)
    "sent": ("DMP: sent", "ok"),
    "not_for_dmp": ("DMP: not for the DMP (DESTDMP=N)", "idle"),
    "not_sent_opposition": ("DMP: not sent, the patient opposed feeding the DMP", "warn"),
    "refused": ("DMP: refused", "bad"),
    "pending": ("DMP: pending", "idle"),
}


def _dmp_pill(feed: dict[str, Any] | None) -> dict[str, str] | None:
    """What became of the report in the DMP, for the clinician (issue #7: the event says why)."""
    if not feed:
        return None
    text, css = _DMP_STATES.get(str(feed.get("state")), ("DMP: " + str(feed.get("state")), "idle"))
    if feed.get("state") == "refused":
        text += f" ({feed.get('error_code') or feed.get('reason') or 'no reason given'})"
    return {"text": text, "css": css}


def _analytes(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per LOINC code: the latest value with its unit and flag, and the values in time order
    for the sparkline (the patient page's compact table, issue #16)."""
    from engine.ui.sparkline import points as sparkline

    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for e in events:
        if e.get("status") in ("cancelled", "deleted", "replaced"):
            continue
        for o in e.get("observations", []):
            if o.get("outcome") == "normalised" and o.get("loinc"):
                found.setdefault(o["loinc"], []).append((str(o.get("at") or e.get("at") or ""),
                                                         o))
    codes: dict[str, dict[str, Any]] = {}
    for loinc, rows in found.items():
        rows.sort(key=lambda r: r[0])
        _, last = rows[-1]
        values = []
        for _, o in rows:
            try:
                values.append(float(o.get("value")))
            except (TypeError, ValueError):
                continue
        shown = last.get("value") if last.get("value") is not None else last.get("value_text")
        flag = last.get("abnormal_flag") or "N"
        codes[loinc] = {
            "loinc": loinc, "count": len(rows), "label": last.get("display") or loinc,
            "latest": f"{last.get('comparator') or ''}{shown if shown is not None else ''}",
            "unit": last.get("unit") or "", "flag": "" if flag == "N" else flag,
            "at": _when(rows[-1][0]), "lab": last.get("performing_lab") or "",
            "spark": sparkline(values) if len(values) > 1 else "",
        }
    return codes


def _series(raw: dict[str, Any], label: str) -> dict[str, Any] | None:
    points = []
    for o in raw.get("points", []):
        try:
            value = float(o["value"])
        except (TypeError, ValueError):
            continue
        at = o.get("at")
        try:
            ts = datetime.fromisoformat(str(at))
        except ValueError:
            continue
        orig = o.get("original") or {}
        ref = " – ".join(x for x in (o.get("reference_low"), o.get("reference_high")) if x)
        points.append({"t": int(ts.timestamp() * 1000), "at": _when(at), "value": value,
                       "lab": o.get("performing_lab") or "?",
                       "original_value": orig.get("value"),
                       "original_unit": orig.get("unit") or "",
                       "original_code": orig.get("code") or "", "reference": ref})
    if not points:
        return None
    unit = raw.get("unit") or next((o.get("unit") for o in raw.get("points", [])), "") or ""
    return {"loinc": raw.get("loinc"), "label": label, "unit": unit, "points": points}


TIMELINE_PAGE = 100  # events per page of the clinician's timeline (newest first)


def patient_view(engine: EngineView, session: Session, patient_id: str, remote: str,
                 kind: str | None, loinc: str | None, offset: int = 0
                 ) -> dict[str, Any] | None:
    """A page of the timeline and, when asked, one analyte's series; None when the user may
    not read this patient (the timeline audited the denied attempt)."""
    from engine.timeline import Denied

    if not patient_id.isdigit():
        return None
    timeline = _timeline(engine)
    who = principal(session)
    pid = int(patient_id)
    try:
        tl = timeline.read_timeline(who, pid, remote, types=[kind] if kind else None,
                                    offset=max(0, offset), limit=TIMELINE_PAGE)
        # The codes with results come from every result, whatever the kind filter shows.
        results = timeline.read_timeline(who, pid, remote, types=["result"], limit=500)
    except Denied:
        return None
    codes = _analytes(results["events"])
    series = None
    if loinc:
        try:
            raw = timeline.read_series(who, pid, loinc, remote)
        except Denied:
            return None
        label = codes.get(loinc, {}).get("label") or loinc
        series = _series(raw, label)
    first = tl["offset"] + 1 if tl["events"] else 0
    page = {"total": tl["total"], "first": first, "last": tl["offset"] + len(tl["events"]),
            "older": tl["next_offset"],
            "newer": max(0, tl["offset"] - TIMELINE_PAGE) if tl["offset"] > 0 else None}
    return {"patient": _patient(tl["patient"]), "events": [_event(e) for e in tl["events"]],
            "codes": sorted(codes.values(), key=lambda c: c["label"]), "series": series,
            "page": page}
