"""/docs and /redoc render in Chromium with no way out but loopback (issue #16).

Every request the browser makes to anything other than the engine is aborted and recorded:
a script or stylesheet still fetched from a CDN would leave the page blank and show up there.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import expect

from tests.ui.browser import browser_page, require_chromium
from tests.ui.conftest import http_port

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


async def _offline(page: Any) -> list[str]:
    """Abort every request that leaves the machine; return the list they are written to."""
    outside: list[str] = []

    async def gate(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK or url.startswith(("data:", "blob:")):
            await route.continue_()
        else:
            outside.append(f"{route.request.resource_type} {url}")
            await route.abort("internetdisconnected")

    await page.context.route("**/*", gate)
    return outside


async def test_swagger_ui_and_redoc_render_offline(make_engine: Any) -> None:
    require_chromium()
    eng = await make_engine(http=True)
    async with browser_page(f"http://127.0.0.1:{http_port(eng)}") as page:
        outside = await _offline(page)

        await page.goto("/docs")
        # Swagger UI builds its page from /openapi.json: the title and an operation appear
        # only once its bundle has loaded and run.
        await expect(page.locator(".swagger-ui .info .title")).to_contain_text(
            "Parcours", timeout=15000)
        await expect(page.locator(".opblock-summary-path", has_text="/healthz")).to_be_visible()

        await page.goto("/redoc")
        await expect(page.locator(".api-info h1")).to_contain_text("Parcours", timeout=15000)
        await expect(page.get_by_role("menuitem", name="Healthz")).to_be_attached()
        await expect(page.get_by_role("button", name="get /healthz")).to_be_attached()

        # ReDoc's sidebar credit ("API docs by Redocly") is an <img> from its CDN, the one
        # outside request left: it costs a broken logo, not the page.
        assert [u for u in outside if not u.startswith("image ")] == [], outside
        others = [e for e in page.console_errors if "ERR_INTERNET_DISCONNECTED" not in e]
        assert others == [], page.console_errors


async def test_docs_assets_are_served_by_the_engine(make_engine: Any) -> None:
    """The pages point at the engine's own paths, and those paths answer with the assets."""
    import httpx

    eng = await make_engine(http=True)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port(eng)}") as c:
        for page in ("/docs", "/redoc"):
            html = (await c.get(page)).text
            assert "cdn." not in html and "fonts.googleapis" not in html, page
        swagger = await c.get("/static-offline-docs/swagger-ui-bundle.js")
        redoc = await c.get("/static-offline-docs/redoc.standalone.js")
    assert swagger.status_code == 200 and len(swagger.content) > 100_000
    assert redoc.status_code == 200 and len(redoc.content) > 100_000
