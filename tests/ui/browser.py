"""Playwright with Debian's Chromium: skipped on a developer machine without it, failed in CI."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("PARCOURS_CHROMIUM", "/usr/bin/chromium"))
# The README's screenshots are refreshed on request (PARCOURS_SCREENSHOTS=1 make test); an
# ordinary run writes them to a scratch folder so the checkout stays clean.
SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("PARCOURS_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / "parcours-screenshots"
)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def require_chromium() -> None:
    if CHROMIUM.exists():
        try:
            import playwright  # noqa: F401
            return
        except ImportError:
            reason = "the playwright package is not installed"
    else:
        reason = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: browser tests must not skip)")
    pytest.skip(reason)


@asynccontextmanager
async def browser_page(base_url: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = await browser.new_context(base_url=base_url,
                                                viewport={"width": 1400, "height": 900})
            page = await context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.console_errors = errors
            yield page
        finally:
            await browser.close()


async def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def sign_in(page: Any, username: str, token: str) -> None:
    await page.goto("/ui/login")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")
