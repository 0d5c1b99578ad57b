"""At 1280 px in Chromium no page scrolls sideways and no table is wider than its box
(issue #16: the messages table and the dashboard's DEAD column overflowed at 1280–1400 px).

The data is the kind that broke the layout: senders given as HD with only an OID
(`^1.2.250…^ISO`), long facility names, INS patient keys, long delivery errors.
"""

from __future__ import annotations

from typing import Any

from tests.routing.test_delivery_e2e import wait_status
from tests.ui.browser import browser_page, require_chromium, shot, sign_in
from tests.ui.conftest import Account, http_port

WIDTH = 1280
SENDERS = [
    ("^1.2.250.1.213.1.1.9^ISO", "CENTRE-HOSPITALIER-INTERCOMMUNAL-DE-VILLENEUVE-SAINT-GEORGES"
     "^1.2.250.1.71.4.2.2.940110018^ISO"),
    ("GAM-HOPITAL-LARIBOISIERE-PARIS-NORD", "^1.2.250.1.71.4.2.2.750100125^ISO"),
    ("LABO", "LABO-BIO-PARIS15"),
]

# The page's own script may not be evaluated from a string (CSP), but a function handed to
# page.evaluate runs in the page's world through the DevTools protocol.
MEASURE = """() => {
  const se = document.scrollingElement;
  const wide = [];
  for (const t of document.querySelectorAll('table')) {
    const box = t.parentElement;
    if (t.offsetParent === null) continue;  // inside a closed <details>
    if (t.getBoundingClientRect().width > box.clientWidth + 1) {
      wide.push((t.id || box.id || box.className || t.parentElement.tagName) + ' '
                + Math.round(t.getBoundingClientRect().width) + '>' + box.clientWidth);
    }
  }
  return {scroll: se.scrollWidth, client: se.clientWidth, wide};
}"""


def hl7(i: int, app: str, facility: str) -> bytes:
    return "\r".join([
        f"MSH|^~\\&|{app}|{facility}|PARCOURS|ARS-IDF|20261125120000||ADT^A01^ADT_A01|"
        f"LAYOUTCONTROLID{i:04d}20261125120000000000000|P|2.5",
        "EVN|A01|20261125120000",
        f"PID|1||2800175123456{i:02d}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS"
        "||DUPONT^JEAN||19800101|M",
        "PV1|1|I|CARDIO^101^1",
    ]).encode() + b"\r"


async def assert_fits(page: Any, name: str) -> None:
    """At 1280 px, then at 1400 px (the widths the issue names), back to 1280 after."""
    for width in (WIDTH, 1400):
        await page.set_viewport_size({"width": width, "height": 900})
        got = await page.evaluate(MEASURE)
        assert got["scroll"] <= got["client"], (name, width, got)
        assert got["wide"] == [], (name, width, got)
    await page.set_viewport_size({"width": WIDTH, "height": 900})
    await shot(page, f"layout-{name}")


async def test_operator_pages_fit_at_1280(ui_engine: Any, accounts: dict[str, Account]) -> None:
    require_chromium()
    for i in range(9):
        app, facility = SENDERS[i % len(SENDERS)]
        await ui_engine.send(hl7(i, app, facility))
    await wait_status(ui_engine, 9, ("failed",))
    async with browser_page(f"http://127.0.0.1:{http_port(ui_engine)}") as page:
        await page.set_viewport_size({"width": WIDTH, "height": 900})
        op = accounts["operator"]
        await sign_in(page, op.username, op.token)
        await page.wait_for_url("**/ui/dashboard")
        await page.wait_for_selector("#throughput[data-ready='1']")
        await assert_fits(page, "dashboard")

        await page.goto("/ui/messages")
        await page.wait_for_selector("#results")
        await assert_fits(page, "messages")
        # The sender reads as a name, or as its OID when the HD has no namespace: never the
        # raw components with their carets.
        senders = await page.locator("#results td.sender").all_text_contents()
        assert senders and not any("^" in s for s in senders), senders
        assert any("1.2.250.1.213.1.1.9" in s for s in senders), senders
        assert any("GAM-HOPITAL-LARIBOISIERE-PARIS-NORD" in s for s in senders), senders

        await page.click("#results tbody tr >> nth=0 >> a")
        await page.wait_for_selector("#deliveries")
        await page.locator("#deliveries details").first.evaluate("d => d.open = true")
        await assert_fits(page, "message")


async def test_patient_page_fits_at_1280(make_engine: Any) -> None:
    require_chromium()
    from tests.ui.clinical import DOCTOR, ROUTES, load_patient, patient_id
    from tests.ui.timeline_support import create_account

    eng = await make_engine(ROUTES, route=True, http=True)
    await load_patient(eng)
    doctor = create_account(eng.engine, "dr-layout", "clinician", DOCTOR)
    async with browser_page(f"http://127.0.0.1:{http_port(eng)}") as page:
        await page.set_viewport_size({"width": WIDTH, "height": 900})
        await sign_in(page, "", doctor.token)
        await page.wait_for_url("**/ui/patients")
        await page.goto(f"/ui/patients/{patient_id(eng)}")
        await page.wait_for_selector("#timeline")
        await assert_fits(page, "patient")


CHART_X_SPAN_DAYS = """() => {
  const x = window.Chart.getChart('trend-chart').scales.x;
  return (x.max - x.min) / 86400000;
}"""


async def test_patient_page_reads_well(make_engine: Any) -> None:
    """Issue #16: analytes as a compact table (latest value, unit, flag, sparkline), times in
    Europe/Paris with their zone, "Bilan" naming its laboratory, and a chart of one point
    spanning days, not years."""
    require_chromium()
    from tests.ui.clinical import DOCTOR, ROUTES, adt, lab_results, patient_id
    from tests.ui.timeline_support import create_account

    eng = await make_engine(ROUTES, route=True, http=True)
    await eng.send(adt("A01", "ADT-1", "20250109100000"))
    labs = lab_results()
    for raw in labs:
        await eng.send(raw)
    await eng.send(adt("A03", "ADT-2", "20250122160000"))
    await wait_status(eng, 2 + len(labs))
    doctor = create_account(eng.engine, "dr-read", "clinician", DOCTOR)
    async with browser_page(f"http://127.0.0.1:{http_port(eng)}") as page:
        await page.set_viewport_size({"width": WIDTH, "height": 900})
        await sign_in(page, "", doctor.token)
        await page.wait_for_url("**/ui/patients")
        await page.goto(f"/ui/patients/{patient_id(eng)}")
        await page.wait_for_selector("#timeline")

        rows = page.locator("#analytes tbody tr")
        assert await rows.count() >= 30
        assert await page.locator("#trend .tabs").count() == 0  # no wall of chips
        glucose = page.locator("#analytes tr", has_text="Glucose [Moles/volume]")
        cells = await glucose.locator("td").all_text_contents()
        assert cells[2].strip() == "mmol/L" and cells[1].strip()  # latest value in its unit
        float(cells[1].strip().lstrip("<>="))
        assert await glucose.locator("td.spark svg polyline").count() == 1  # three results

        # The discharge was sent as 16:00 local time (HL7 DTM without offset, France):
        # shown as such, with its zone.
        first = (await page.locator("#timeline li .when").first.text_content()) or ""
        assert first.startswith("2025-01-22 16:00 CET"), first
        for what in await page.locator("#timeline li.kind-result .what").all_text_contents():
            assert "Bilan" in what and "·" in what and len(what.split("·")[1].strip()) > 2, what

        await glucose.locator("a").click()
        await page.wait_for_selector("#trend-chart[data-ready='1']")
        span = await page.evaluate(CHART_X_SPAN_DAYS)
        assert 11 <= span <= 13, span  # 10–21 January and a margin
        await assert_fits(page, "patient-trend")


async def test_a_single_result_gets_a_chart_of_days(make_engine: Any) -> None:
    require_chromium()
    from tests.ui.clinical import DOCTOR, ROUTES, adt, lab_results, patient_id
    from tests.ui.timeline_support import create_account

    eng = await make_engine(ROUTES, route=True, http=True)
    await eng.send(adt("A01", "ADT-1", "20250109100000"))
    await eng.send(lab_results()[0])
    await wait_status(eng, 2)
    doctor = create_account(eng.engine, "dr-one", "clinician", DOCTOR)
    async with browser_page(f"http://127.0.0.1:{http_port(eng)}") as page:
        await page.set_viewport_size({"width": WIDTH, "height": 900})
        await sign_in(page, "", doctor.token)
        await page.wait_for_url("**/ui/patients")
        await page.goto(f"/ui/patients/{patient_id(eng)}")
        row = page.locator("#analytes tr", has_text="Glucose")
        assert "1 result" in ((await row.locator("td.spark").text_content()) or "")
        await row.locator("a").click()
        await page.wait_for_selector("#trend-chart[data-ready='1']")
        span = await page.evaluate(CHART_X_SPAN_DAYS)
        assert 6 <= span <= 8, span
        assert page.console_errors == [], page.console_errors
