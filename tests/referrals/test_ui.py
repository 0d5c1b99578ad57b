"""The DAC in a real browser: worklist → request → accept → the patient's timeline, and the
care circle that comes with acceptance and ends with closure."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import expect
from sqlalchemy import select

from engine.referrals.models import referrals
from engine.timeline.models import audit_log, care_circle
from tests.ui.browser import browser_page, require_chromium, shot, sign_in
from tests.ui.conftest import csrf_of, http_port, login
from tests.ui.timeline_support import create_account

from .support import DAC, GP_RPPS, INS, ROUTES, ref, settle


async def _dac(make_engine: Any, store_url: str, tmp_path: Path) -> Any:
    eng = await make_engine(ROUTES, store_url=store_url, route=True, http=True,
                            home=tmp_path / "home")
    svc = eng.engine.referrals
    svc.add_structure(DAC, "DAC Paris Centre")
    svc.add_structure("750000002", "DAC Paris Est")
    eng.coordinator = create_account(eng.engine, "coord-1", "clinician", "10000000011")
    eng.outsider = create_account(eng.engine, "dr-other", "clinician", "10000000099")
    eng.gp = create_account(eng.engine, "dr-dupont", "clinician", GP_RPPS)
    svc.add_member(DAC, "coord-1")
    await eng.send(ref("I12", "UI-1", priority="A"))
    await eng.send(ref("I12", "UI-2", ref_id="DEM-2", priority="S"))
    await settle(eng, 2)
    return eng


async def _timeline_status(eng: Any, token: str) -> int:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port(eng)}",
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        return (await c.get(f"/api/v1/patients/{_patient(eng)}/timeline")).status_code


def _patient(eng: Any) -> int:
    from engine.timeline.identity import lookup

    with eng.store.engine.connect() as conn:
        pid = lookup(conn, "1.2.250.1.213.1.4.8", INS)
    assert pid is not None
    return pid


async def test_worklist_accept_and_patient_page(make_engine: Any, store_url: str,
                                               tmp_path: Path) -> None:
    require_chromium()
    eng = await _dac(make_engine, store_url, tmp_path)
    coord = eng.coordinator
    assert await _timeline_status(eng, coord.token) == 403  # not in the care circle yet
    async with browser_page(f"http://127.0.0.1:{http_port(eng)}") as page:
        await sign_in(page, coord.username, coord.token)
        await page.click("header >> text=Support requests")
        rows = page.locator("#worklist tbody tr")
        await expect(rows).to_have_count(2)
        # most urgent first: the stat request, then the asap one
        await expect(rows.nth(0)).to_contain_text("DEM-2")
        await expect(rows.nth(0)).to_contain_text("stat")
        await expect(rows.nth(1)).to_contain_text("Jeanne DUPONT")
        await shot(page, "referrals")
        await rows.nth(1).locator("a").click()
        await expect(page.locator("#status")).to_have_text("requested")
        # declining needs a reason: the workflow's own sentence is shown
        await page.click("#decline-form button")
        await expect(page.locator(".alert.bad")).to_contain_text("needs a reason")
        await page.click("#accept-form button")
        await expect(page.locator("#status")).to_have_text("accepted")
        await page.fill("#assign-form input[name=coordinator]", "coord-1")
        await page.click("#assign-form button")
        await expect(page.locator("#coordinator")).to_have_text("coord-1")
        await page.fill("#evaluation-form textarea", "Évaluation à domicile prévue")
        await page.click("#evaluation-form button")
        await expect(page.locator("#history li")).to_have_count(4)
        await shot(page, "referral")
        # the DAC is in the care circle now: the patient page opens, with the request
        await page.click("#request a")
        await expect(page.locator("#patient-referrals")).to_contain_text("DEM-1")
        await expect(page.locator("#timeline")).to_contain_text("Support request accepted")
        await expect(page.locator("#timeline")).to_contain_text("Evaluation recorded")
        # the one refused form (declining without a reason) answered 422, nothing else failed
        assert [e for e in page.console_errors if "422" not in e] == []
        assert len(page.console_errors) == 1
    assert await _timeline_status(eng, coord.token) == 200
    assert await _timeline_status(eng, eng.outsider.token) == 403


async def test_access_rules_and_invalid_transition(make_engine: Any, store_url: str,
                                                   tmp_path: Path) -> None:
    eng = await _dac(make_engine, store_url, tmp_path)
    base = f"http://127.0.0.1:{http_port(eng)}"
    rid = eng.engine.referrals.by_key("1.2.250.1.999.1|DEM-1")
    async with httpx.AsyncClient(base_url=base) as outsider:
        await login(outsider, eng.outsider)
        listed = await outsider.get("/ui/referrals")
        assert listed.status_code == 200 and "DEM-1" not in listed.text
        assert (await outsider.get(f"/ui/referrals/{rid}")).status_code == 403
    async with httpx.AsyncClient(base_url=base) as gp:  # the requester follows its request
        await login(gp, eng.gp)
        page = await gp.get(f"/ui/referrals/{rid}")
        assert page.status_code == 200 and "requested" in page.text
    async with httpx.AsyncClient(base_url=base) as c:
        await login(c, eng.coordinator)
        page = await c.get(f"/ui/referrals/{rid}")
        token = csrf_of(page.text)
        r = await c.post(f"/ui/referrals/{rid}/action", data={"csrf": "forged",
                                                               "action": "accepted"})
        assert r.status_code == 403
        for action in ("accepted", "completed"):
            r = await c.post(f"/ui/referrals/{rid}/action",
                             data={"csrf": token, "action": action})
            assert r.status_code == 303 and "done=" in r.headers["location"]
        r = await c.post(f"/ui/referrals/{rid}/action", data={"csrf": token,
                                                               "action": "in-progress"},
                         follow_redirects=True)
        assert "a request completed cannot become in-progress" in r.text
    with eng.store.engine.connect() as conn:
        assert conn.execute(select(referrals.c.status).where(referrals.c.id == rid)
                            ).scalar() == "completed"
        grants = conn.execute(select(care_circle.c.until, care_circle.c.granted_by).where(
            care_circle.c.granted_by == f"referral:{rid}")).all()
        actions = {a for (a,) in conn.execute(select(audit_log.c.action))}
    # the requester is told of each change: one RRI^I12 per status, RF1-1 from table 0283
    out = tmp_path / "home" / "out" / "rri"
    for _ in range(200):
        status = sorted(out.glob("*referral-status*"))
        if len(status) == 2:
            break
        await asyncio.sleep(0.05)
    rf1 = [p.read_bytes().decode().split("\r")[1] for p in status]
    assert sorted(rf1) == ["RF1|A|||||DEM-1^^1.2.250.1.999.1"] * 2  # accepted, completed
    assert all(p.read_bytes().startswith(b"MSH|^~\\&|PARCOURS|GHT|MEDIGP|CAB-DUPONT|")
               for p in status)
    # the grant given on acceptance ends after the grace period once closed
    assert len(grants) == 1 and grants[0].until is not None
    assert {"referral_read", "referral_worklist", "referral_accepted",
            "referral_completed"} <= actions
