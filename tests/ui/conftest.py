"""UI fixtures: a routing engine with its HTTP server, accounts per role, a signed-in client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.routing.test_delivery_e2e import routes

BROKEN_ROUTE = "  - name: to-broken\n    when: {message_type: ADT}\n    to: [broken]\n"


@dataclass
class Account:
    username: str
    token: str
    role: str


def http_port(eng: Any) -> int:
    return int(eng.engine._http.servers[0].sockets[0].getsockname()[1])


@pytest.fixture
async def ui_engine(make_engine: Any, tmp_path: Path) -> Any:
    """An engine that routes ADT to files and to a destination that always fails."""
    out = tmp_path / "out"
    rf = tmp_path / "routes.yaml"
    rf.write_text(routes(out, BROKEN_ROUTE))
    eng = await make_engine(rf.read_text(), route=True, http=True)
    object.__setattr__(eng.engine.settings, "routes_file", rf)
    eng.routes_file = rf
    eng.out = out
    return eng


@pytest.fixture
def accounts(ui_engine: Any) -> dict[str, Account]:
    """One account per role, created the way an administrator does (issue #5's users)."""
    from tests.ui.timeline_support import create_account

    return {role: create_account(ui_engine.engine, f"{role}-1", role)
            for role in ("admin", "operator", "clinician")}


async def login(client: httpx.AsyncClient, account: Account) -> httpx.Response:
    page = await client.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce, page.text
    return await client.post("/ui/login", data={"nonce": nonce.group(1),
                                                "username": account.username,
                                                "token": account.token})


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


@pytest.fixture
async def client(ui_engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port(ui_engine)}",
                                 timeout=30) as c:
        yield c
