"""Who may see what: sign-in, roles, CSRF, cookies, and the headers that keep pages inert."""

from __future__ import annotations

from typing import Any

import httpx

from tests.intake.test_ack_rules import msg
from tests.routing.test_delivery_e2e import wait_status
from tests.ui.conftest import Account, csrf_of, login

OPERATOR_PAGES = ["/ui/dashboard", "/ui/messages", "/ui/routes", "/ui/backlog"]


async def test_anonymous_is_sent_to_login(client: httpx.AsyncClient) -> None:
    for page in [*OPERATOR_PAGES, "/ui/patients", "/ui/messages/1", "/ui/"]:
        r = await client.get(page)
        assert r.status_code == 303, page
        assert r.headers["location"].startswith("/ui/login?next="), page
    r = await client.get("/ui/api/dashboard")
    assert r.status_code == 401
    r = await client.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/ui/"


async def test_login_sets_a_strict_httponly_cookie(client: httpx.AsyncClient,
                                                   accounts: dict[str, Account]) -> None:
    r = await login(client, accounts["operator"])
    assert r.status_code == 303 and r.headers["location"] == "/ui/dashboard"
    cookie = r.headers["set-cookie"]
    assert "parcours_session=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert accounts["operator"].token not in cookie
    assert (await client.get("/ui/dashboard")).status_code == 200


async def test_bad_token_and_missing_nonce_are_refused(client: httpx.AsyncClient,
                                                       accounts: dict[str, Account]) -> None:
    wrong = Account(accounts["operator"].username, "not-the-token", "operator")
    r = await login(client, wrong)
    assert r.status_code == 401 and "Unknown user or token" in r.text
    assert "parcours_session" not in r.headers.get("set-cookie", "")
    # A login form posted from elsewhere (no nonce cookie): login CSRF is refused.
    r = await client.post("/ui/login", data={"username": accounts["operator"].username,
                                             "token": accounts["operator"].token})
    assert r.status_code == 400


async def test_clinician_cannot_open_operator_pages(client: httpx.AsyncClient,
                                                    accounts: dict[str, Account]) -> None:
    r = await login(client, accounts["clinician"])
    assert r.headers["location"] == "/ui/patients"
    for page in OPERATOR_PAGES:
        r = await client.get(page)
        assert r.status_code == 403, page
        assert "needs the role operator or admin" in r.text
    assert (await client.get("/ui/api/dashboard")).status_code == 403
    r = await client.post("/ui/routes/reload", data={"csrf": "x"})
    assert r.status_code == 403


async def test_actions_need_the_csrf_token(client: httpx.AsyncClient, ui_engine: Any,
                                           accounts: dict[str, Account]) -> None:
    await ui_engine.send(msg("CSRF-1").encode())
    [row] = await wait_status(ui_engine, 1, ("failed",))
    await login(client, accounts["operator"])
    page = await client.get(f"/ui/messages/{row['id']}")
    token = csrf_of(page.text)
    for action in (f"/ui/messages/{row['id']}/reprocess", "/ui/routes/reload",
                   "/ui/deliveries/1/retry"):
        r = await client.post(action, data={})
        assert r.status_code == 403, action
        r = await client.post(action, data={"csrf": token[:-2] + "xx"})
        assert r.status_code == 403, action
    # The same action with the token goes through.
    r = await client.post(f"/ui/messages/{row['id']}/reprocess", data={"csrf": token})
    assert r.status_code == 303


async def test_forged_or_altered_cookie_is_ignored(client: httpx.AsyncClient,
                                                   accounts: dict[str, Account]) -> None:
    await login(client, accounts["clinician"])
    value = client.cookies["parcours_session"]
    body, mac = value.rsplit(".", 1)
    import base64
    import json

    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data["r"] = "admin"  # promote oneself
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    client.cookies.clear()
    client.cookies.set("parcours_session", f"{forged}.{mac}")
    r = await client.get("/ui/dashboard")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


async def test_login_next_is_never_an_external_url(client: httpx.AsyncClient,
                                                   accounts: dict[str, Account]) -> None:
    page = await client.get("/ui/login?next=//evil.example/x")
    assert 'value="/ui/"' in page.text
    r = await login(client, accounts["operator"])
    assert r.headers["location"] == "/ui/dashboard"


async def test_pages_carry_csp_and_escape_message_content(
        client: httpx.AsyncClient, ui_engine: Any, accounts: dict[str, Account]) -> None:
    hostile = msg("XSS-1", name="<script>alert(1)</script>^JEAN")
    await ui_engine.send(hostile.encode())
    rows = await wait_status(ui_engine, 1, ("failed",))
    await login(client, accounts["operator"])
    r = await client.get(f"/ui/messages/{rows[0]['id']}")
    assert r.status_code == 200
    assert "<script>alert(1)" not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["cache-control"] == "no-store"
    assert " on" + "click=" not in r.text and "<script>" not in r.text
    r = await client.get("/ui/messages?patient=%3Cscript%3E")
    assert "<script>" not in r.text.split("</nav>", 1)[1]


async def test_sign_out_ends_the_session(client: httpx.AsyncClient,
                                         accounts: dict[str, Account]) -> None:
    await login(client, accounts["operator"])
    page = await client.get("/ui/dashboard")
    r = await client.post("/ui/logout", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303
    assert (await client.get("/ui/dashboard")).status_code == 303
