"""Absurd ids in URLs get 404/422, never a 500 — on every route that takes an id.

A value ≥ 2^63 used to reach the driver (SQLite: OverflowError binding it) and answer 500.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.store.ids import MAX_STORE_ID, clamp_offset, parse_store_id
from tests.routing.test_delivery_e2e import routes
from tests.ui.conftest import Account, csrf_of, http_port, login
from tests.ui.timeline_support import create_account

BAD = [str(2**63), str(2**64 + 5), "9" * 40, "-1", "0", "abc", "1e3", "½"]


def test_parse_store_id() -> None:
    assert parse_store_id("1") == 1
    assert parse_store_id(str(MAX_STORE_ID)) == MAX_STORE_ID
    for text in BAD + ["", None, "٣"]:  # "٣" is a digit to str.isdigit, not to us
        assert parse_store_id(text) is None, text
    assert clamp_offset("9" * 30) == MAX_STORE_ID and clamp_offset("x") == 0


@pytest.fixture
async def engine_both(make_engine: Any, store_url: str, tmp_path: Path) -> Any:
    eng = await make_engine(routes(tmp_path / "out"), store_url=store_url, route=True,
                            http=True)
    return eng


async def test_api_ids_out_of_range_are_422_never_500(engine_both: Any) -> None:
    acct = create_account(engine_both.engine, "admin-ids", "admin")
    base = f"http://127.0.0.1:{http_port(engine_both)}"
    async with httpx.AsyncClient(base_url=base, timeout=30,
                                 headers={"Authorization": f"Bearer {acct.token}"}) as c:
        for bad in BAD:
            for path in (f"/api/v1/patients/{bad}", f"/api/v1/patients/{bad}/timeline",
                         f"/api/v1/patients/{bad}/observations?loinc=2345-7",
                         f"/api/v1/documents/{bad}"):
                r = await c.get(path)
                assert r.status_code in (404, 422), (path, r.status_code, r.text)
            r = await c.post(f"/api/v1/conflicts/{bad}/resolve", json={"action": "dismiss"})
            assert r.status_code in (404, 422), (bad, r.status_code)
        # The largest valid id is a well-formed request for a record that does not exist.
        r = await c.get(f"/api/v1/documents/{MAX_STORE_ID}")
        assert r.status_code == 404
        r = await c.get(f"/api/v1/patients/{MAX_STORE_ID}")
        assert r.status_code in (403, 404)  # same answer as any patient one may not read
        r = await c.get("/api/v1/patients/1/timeline", params={"offset": str(2**63)})
        assert r.status_code == 422
        r = await c.post("/api/v1/conflicts/1/resolve",
                         json={"action": "apply", "patient_id": 2**63})
        assert r.status_code == 422 and "store id" in r.text


async def test_ui_ids_out_of_range_are_404_or_422_never_500(engine_both: Any) -> None:
    accounts = {role: create_account(engine_both.engine, f"{role}-ids", role)
                for role in ("admin", "operator")}
    base = f"http://127.0.0.1:{http_port(engine_both)}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        await login(c, Account(accounts["admin"].username, accounts["admin"].token, "admin"))
        page = await c.get("/ui/messages")
        assert page.status_code == 200
        csrf = csrf_of(page.text)
        for bad in BAD:
            r = await c.get(f"/ui/patients/{bad}")
            assert r.status_code in (404, 422), (bad, r.status_code)
            r = await c.get(f"/ui/messages/{bad}")
            assert r.status_code in (404, 422), (bad, r.status_code)
            for post in (f"/ui/messages/{bad}/reprocess", f"/ui/deliveries/{bad}/retry",
                         f"/ui/conflicts/{bad}/resolve"):
                r = await c.post(post, data={"csrf": csrf, "action": "dismiss"})
                assert r.status_code in (404, 422), (post, r.status_code)
        r = await c.get(f"/ui/messages/{MAX_STORE_ID}")
        assert r.status_code == 404 and "No message" in r.text
        r = await c.get("/ui/messages", params={"before": "9" * 30})
        assert r.status_code == 200
        r = await c.get("/ui/patients/1", params={"offset": "9" * 30})
        assert r.status_code in (200, 403, 404)
