"""The clinician's pages behind issue #5's rules: care circle, roles, audit of every read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from engine.timeline.models import audit_log
from tests.ui.clinical import DOCTOR, ROUTES, load_patient, patient_id
from tests.ui.conftest import Account, http_port, login
from tests.ui.timeline_support import create_account


@pytest.fixture
async def clinical(make_engine: Any, tmp_path: Path) -> Any:
    eng = await make_engine(ROUTES, route=True, http=True)
    await load_patient(eng)
    eng.accounts = {
        "doctor": create_account(eng.engine, "dr-martin", "clinician", DOCTOR),
        "stranger": create_account(eng.engine, "dr-other", "clinician", "19999999999"),
        "operator": create_account(eng.engine, "op", "operator"),
    }
    return eng


def audit_rows(eng: Any) -> list[dict[str, Any]]:
    with eng.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(audit_log).order_by(audit_log.c.id))
                .mappings()]


async def test_care_circle_clinician_reads_timeline_and_trend(clinical: Any) -> None:
    pid = patient_id(clinical)
    doctor: Account = clinical.accounts["doctor"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port(clinical)}") as c:
        await login(c, doctor)
        found = await c.get("/ui/patients", params={"identifier": "DEMO000123"})
        assert f'href="/ui/patients/{pid}"' in found.text and "PATIENT DEMO" in found.text
        page = await c.get(f"/ui/patients/{pid}")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        for kind in ("kind-stay", "kind-movement", "kind-result"):
            assert kind in page.text, kind
        m = re.search(r'\?loinc=([0-9-]+)#trend">Glucose', page.text)
        assert m, "the glucose series is offered"
        trend = await c.get(f"/ui/patients/{pid}?loinc={m.group(1)}")
        data = json.loads(re.search(r'id="trend-data">(.*?)</script>', trend.text, re.S)
                          .group(1))
        assert data["unit"] == "mmol/L" and len(data["points"]) == 3
        assert len({p["lab"] for p in data["points"]}) == 3  # one point per laboratory
        assert {p["original_unit"] for p in data["points"]} == {"g/L", "mmol/L", "mg/dL"}
        assert "trend-chart" in trend.text and "chart.umd.min.js" in trend.text
    actions = [(r["actor"], r["action"], r["outcome"]) for r in audit_rows(clinical)]
    assert ("dr-martin", "search", "allowed") in actions
    assert ("dr-martin", "timeline", "allowed") in actions
    assert ("dr-martin", "observations", "allowed") in actions


async def test_outside_the_circle_and_operators_read_nothing(clinical: Any) -> None:
    pid = patient_id(clinical)
    base = f"http://127.0.0.1:{http_port(clinical)}"
    async with httpx.AsyncClient(base_url=base) as c:
        await login(c, clinical.accounts["stranger"])
        found = await c.get("/ui/patients", params={"identifier": "DEMO000123"})
        assert "No patient you may see" in found.text and "PATIENT" not in found.text
        page = await c.get(f"/ui/patients/{pid}")
        assert page.status_code == 403 and "PATIENT" not in page.text
        missing = await c.get("/ui/patients/999999")
        assert missing.status_code == 403  # the same answer: existence is not revealed
    async with httpx.AsyncClient(base_url=base) as c:
        await login(c, clinical.accounts["operator"])
        r = await c.get(f"/ui/patients/{pid}")
        assert r.status_code == 403
        r = await c.get("/ui/patients", params={"identifier": "DEMO000123"})
        assert r.status_code == 403
        # Operators do see messages (their job), and that read is audited per patient.
        r = await c.get("/ui/messages/1")
        assert r.status_code == 200
    rows = audit_rows(clinical)
    assert any(r["actor"] == "dr-other" and r["action"] == "timeline"
               and r["outcome"] == "denied" for r in rows)
    assert any(r["actor"] == "op" and r["action"] == "ui.message" and r["patient_id"] == pid
               for r in rows)


async def test_deactivated_user_loses_the_session(clinical: Any) -> None:
    from engine.timeline.auth import set_active

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port(clinical)}") as c:
        await login(c, clinical.accounts["doctor"])
        assert (await c.get("/ui/patients")).status_code == 200
        set_active(clinical.engine.timeline.db, "dr-martin", False)
        r = await c.get("/ui/patients")
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


async def test_timeline_pages(clinical: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Newest first, a page at a time, with links both ways; a bad offset is page one."""
    from engine.ui import auth_adapter

    monkeypatch.setattr(auth_adapter, "TIMELINE_PAGE", 2)
    pid = patient_id(clinical)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port(clinical)}") as c:
        await login(c, clinical.accounts["doctor"])
        first = await c.get(f"/ui/patients/{pid}")
        total = int(re.search(r"events 1–2 of (\d+)", first.text).group(1))
        assert total > 4
        assert first.text.count('<li class="kind-') == 2
        assert f'href="/ui/patients/{pid}?offset=2" rel="next"' in first.text
        assert 'rel="prev"' not in first.text
        second = await c.get(f"/ui/patients/{pid}", params={"offset": "2"})
        assert f"events 3–4 of {total}" in second.text
        assert f'href="/ui/patients/{pid}?offset=0" rel="prev"' in second.text
        titles = lambda page: re.findall(r'<div class="what">([^<\n]+)', page.text)  # noqa: E731
        assert titles(first) != titles(second)
        last = await c.get(f"/ui/patients/{pid}", params={"offset": str(total - 1)})
        assert last.text.count('<li class="kind-') == 1 and 'rel="next"' not in last.text
        bad = await c.get(f"/ui/patients/{pid}", params={"offset": "abc"})
        assert "events 1–2 of" in bad.text
        kind = await c.get(f"/ui/patients/{pid}", params={"kind": "result"})
        assert "kind-movement" not in kind.text
