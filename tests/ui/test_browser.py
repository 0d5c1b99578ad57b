"""In a real browser: sign in, watch counters move, retry a dead letter, dry-run, backlog.

Each page is saved under docs/screenshots/ (shown in the README)."""

from __future__ import annotations

from typing import Any

from playwright.async_api import expect

from tests.intake.test_ack_rules import msg
from tests.routing.test_delivery_e2e import wait_status
from tests.ui.browser import browser_page, require_chromium, shot, sign_in
from tests.ui.conftest import Account, http_port


async def test_operator_in_the_browser(ui_engine: Any, accounts: dict[str, Account]) -> None:
    require_chromium()
    op = accounts["operator"]
    async with browser_page(f"http://127.0.0.1:{http_port(ui_engine)}") as page:
        await page.goto("/ui/dashboard")
        assert "/ui/login" in page.url  # anonymous → sign-in
        await page.fill("input[name=username]", op.username)
        await shot(page, "login")
        await page.fill("input[name=token]", op.token)
        await page.click("button[type=submit]")
        await page.wait_for_url("**/ui/dashboard")
        cell = page.locator('#channels tr[data-name="main"] [data-k="received"]')
        assert (await cell.text_content()) == "0"

        # Messages over MLLP: the counters move without reloading the page.
        for i in range(6):
            await ui_engine.send(msg(f"BR-{i}").encode())
        await wait_status(ui_engine, 6, ("failed",))
        # (expect() polls from Python: the page's CSP forbids evaluating strings in it.)
        await expect(cell).to_have_text("6", timeout=15000)
        dead = page.locator('#destinations tr[data-name="broken"] [data-k="dead_now"]')
        await expect(dead).to_have_text("6", timeout=15000)
        await page.wait_for_selector("#throughput[data-ready='1']")
        await page.reload()
        await page.wait_for_selector("#throughput[data-ready='1']")
        await shot(page, "dashboard")

        await page.click("text=Messages")
        await page.wait_for_selector("#results")
        assert await page.locator("#results tbody tr").count() == 6
        await shot(page, "messages")

        # Fix the destination in routes.yaml and reload from the Routes page.
        rf = ui_engine.routes_file
        rf.write_text(rf.read_text().replace("/proc/parcours-cannot-write",
                                             str(ui_engine.out / "fixed")))
        await page.click("header >> text=Routes")
        await page.wait_for_selector("text=The file on disk differs")
        await page.click("#reload-form button")
        await page.wait_for_selector("text=routes.yaml reloaded.")

        # Dry run: paste a message, see which routes match.
        await page.fill("textarea[name=message]", msg("DRY-1").replace("\r", "\n"))
        await page.click("#dry-run-form button")
        await page.wait_for_selector("#dry-result")
        assert await page.locator("tr.dry-route.match").count() == 3
        await shot(page, "routes")

        # Open a failed delivery from the dashboard and retry it.
        await page.click("header >> text=Dashboard")
        await page.click("#dead-letters a >> nth=0")
        await page.wait_for_selector("#deliveries")
        await shot(page, "message")
        await page.click("button.retry >> nth=0")
        await page.wait_for_selector("text=Delivery put back in line")
        for _ in range(100):
            if list((ui_engine.out / "fixed").rglob("*.hl7")):
                break
            await page.wait_for_timeout(100)
        assert len(list((ui_engine.out / "fixed").rglob("*.hl7"))) == 1
        await page.reload()
        assert await page.locator("#deliveries .pill.ok").count() >= 3  # all delivered now

        await page.click("header >> text=Mapping backlog")
        await page.wait_for_selector("h1")
        await shot(page, "backlog")
        assert page.console_errors == [], page.console_errors


async def test_clinician_timeline_and_trend_in_the_browser(make_engine: Any) -> None:
    require_chromium()
    from tests.ui.clinical import DOCTOR, ROUTES, load_patient, patient_id
    from tests.ui.timeline_support import create_account

    eng = await make_engine(ROUTES, route=True, http=True)
    await load_patient(eng)
    doctor = create_account(eng.engine, "dr-martin", "clinician", DOCTOR)
    async with browser_page(f"http://127.0.0.1:{http_port(eng)}") as page:
        await sign_in(page, "", doctor.token)  # the token alone says who
        await page.wait_for_url("**/ui/patients")
        await page.fill("input[name=identifier]", "DEMO000123")
        await page.click("form.filters button")
        await page.click("text=Open timeline")
        await page.wait_for_selector("#timeline")
        assert await page.locator("#timeline li.kind-result").count() == 3
        await page.click("#analytes a:has-text('Glucose')")
        await page.wait_for_selector("#trend-chart[data-ready='1']")
        assert await page.locator("#trend-table tbody tr").count() == 3
        assert page.url.endswith("#trend") and f"/ui/patients/{patient_id(eng)}" in page.url
        await shot(page, "patient")
        assert page.console_errors == [], page.console_errors
