"""Operator pages against a running engine: counters, message page, retry, dry run, reload,
mapping backlog."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import httpx

from engine.ui.hl7_tree import parse_tree
from tests.intake.test_ack_rules import msg
from tests.routing.test_delivery_e2e import wait_status
from tests.ui.conftest import Account, csrf_of, login

ROOT = Path(__file__).resolve().parents[2]


def test_tree_names_fields_from_the_message_version() -> None:
    tree = parse_tree(msg("T-1"), "2.5.1")
    pid = next(s for s in tree if s.name == "PID")
    pid3 = next(f for f in pid.fields if f.position == "PID-3")
    assert pid3.name == "Patient identifier list" and pid3.datatype == "CX"
    assert [c.name for c in pid3.repetitions[0]][:2] == ["Id number", "Assigning authority"]
    msh = tree[0]
    assert [f.position for f in msh.fields[:3]] == ["MSH-1", "MSH-2", "MSH-3"]
    assert msh.fields[0].value == "|" and msh.fields[2].name == "Sending application"
    z = parse_tree(msg("T-2").rstrip("\r") + "\rZBE|1^CHU|20260101||INSERT\rZZZ|a|b\r", "2.5")
    zbe = next(s for s in z if s.name == "ZBE")
    assert next(f for f in zbe.fields if f.position == "ZBE-4").name.startswith(
        "Action on the movement")
    zzz = next(s for s in z if s.name == "ZZZ")
    assert zzz.fields[0].name == "" and zzz.fields[0].position == "ZZZ-1"  # position only


async def test_dashboard_counters_and_throughput_move(
        client: httpx.AsyncClient, ui_engine: Any, accounts: dict[str, Account]) -> None:
    await login(client, accounts["operator"])
    before = (await client.get("/ui/api/dashboard")).json()
    main = next(c for c in before["channels"] if c["name"] == "main")
    assert main["state"] == "listening" and main["received"] == 0
    for i in range(4):
        await ui_engine.send(msg(f"DB-{i}").encode())
    await wait_status(ui_engine, 4, ("failed",))
    await asyncio.sleep(2.1)  # past the dashboard's cache
    after = (await client.get("/ui/api/dashboard")).json()
    main = next(c for c in after["channels"] if c["name"] == "main")
    assert main["received"] == 4 and main["acks"] == {"AA": 4} and main["per_minute"] > 0
    dests = {d["name"]: d for d in after["destinations"]}
    assert dests["files"]["delivered"] == 4 and dests["broken"]["dead_now"] == 4
    assert dests["broken"]["state"] == "dead letters"
    t = after["throughput"]
    assert len(t["labels"]) == 60 and sum(t["received"]) == 4 and sum(t["failed"]) == 4
    assert sum(t["delivered"]) == 8  # files + json
    page = await client.get("/ui/dashboard")
    assert "Dead letters" in page.text and "broken / to-broken" in page.text


async def test_message_page_and_retry_of_a_dead_letter(
        client: httpx.AsyncClient, ui_engine: Any, accounts: dict[str, Account]) -> None:
    await ui_engine.send(msg("RT-1").encode())
    [row] = await wait_status(ui_engine, 1, ("failed",))
    await login(client, accounts["operator"])
    page = await client.get(f"/ui/messages/{row['id']}")
    assert page.status_code == 200
    assert "MSH|^~\\&amp;|HIS|CHU-X" in page.text  # raw, escaped
    assert "MSA|AA|RT-1" in page.text  # the ACK that was sent
    assert "Patient identifier list" in page.text  # the parsed tree
    assert "gave up after 2 attempts" in page.text and 'class="retry"' in page.text
    # Search finds it by control id, by type and by patient.
    for query in ("control_id=RT-1", "type=ADT%5EA01", "patient=12345", "status=failed"):
        r = await client.get(f"/ui/messages?{query}")
        assert f'href="/ui/messages/{row["id"]}"' in r.text, query
    r = await client.get("/ui/messages?control_id=nope")
    assert "No message matches" in r.text
    # The operator fixes the destination, reloads, and retries the dead letter.
    rf: Path = ui_engine.routes_file
    rf.write_text(rf.read_text().replace("/proc/parcours-cannot-write",
                                         str(ui_engine.out / "fixed")))
    token = csrf_of(page.text)
    r = await client.post("/ui/routes/reload", data={"csrf": token})
    assert r.headers["location"] == "/ui/routes?done=reloaded"
    from sqlalchemy import select

    from engine.store.models import deliveries

    with ui_engine.store.engine.connect() as conn:
        dead_id = conn.execute(select(deliveries.c.id).where(
            deliveries.c.status == "dead")).scalar_one()
    r = await client.post(f"/ui/deliveries/{dead_id}/retry", data={"csrf": token})
    assert r.status_code == 303 and "done=retried" in r.headers["location"]
    await wait_status(ui_engine, 1, ("done",))
    page = await client.get(r.headers["location"])
    assert "Delivery put back in line" in page.text
    assert len(list((ui_engine.out / "fixed").rglob("*.hl7"))) == 1
    # Reprocess: a new generation of deliveries.
    r = await client.post(f"/ui/messages/{row['id']}/reprocess", data={"csrf": token})
    assert "done=reprocessed&n=3" in r.headers["location"]


async def test_dry_run_shows_what_routes_test_shows(
        client: httpx.AsyncClient, ui_engine: Any, accounts: dict[str, Account]) -> None:
    await login(client, accounts["admin"])
    page = await client.get("/ui/routes")
    assert "valid" in page.text and "to-broken" in page.text
    sample = msg("DRY-1").replace("\r", "\n") + "\n" + msg("DRY-2", mtype="ORU^R01")
    r = await client.post("/ui/routes/dry-run", data={"csrf": csrf_of(page.text),
                                                      "message": sample, "channel": "main"})
    assert r.status_code == 200
    text = r.text
    assert "Message 1: ADT^A01, control id DRY-1" in text
    assert "transformer <b>event_summary</b>" in text and "MATCH" in text
    assert "message_type &#39;ORU&#39; is not one of [&#39;ADT&#39;]" in text
    assert "No route matches" not in text.split("Message 2")[0]
    assert text.count("the message would be stored as") == 0  # message 1 matched
    with ui_engine.store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM messages").scalar() == 0


async def test_invalid_routes_file_is_shown_and_reload_refused(
        client: httpx.AsyncClient, ui_engine: Any, accounts: dict[str, Account]) -> None:
    await login(client, accounts["operator"])
    ui_engine.routes_file.write_text("version: 1\nchannels: {}\n")
    page = await client.get("/ui/routes")
    assert "invalid" in page.text and "routes.yaml:" in page.text
    r = await client.post("/ui/routes/reload", data={"csrf": csrf_of(page.text)})
    assert r.headers["location"] == "/ui/routes?done=reload-refused"
    page = await client.get(r.headers["location"])
    assert "the running routes were kept" in page.text and "refused" in page.text


async def test_backlog_accept_maps_and_reprocesses(make_engine: Any, tmp_path: Path) -> None:
    from tests.lab.test_backlog_flow import DATA
    from tests.lab.test_backlog_flow import routes as lab_routes
    from tests.ui.conftest import http_port
    from transformers.hl7.batch import split_messages

    mapping_dir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mapping_dir, ignore=shutil.ignore_patterns("*.py"))
    out = tmp_path / "lab-out"
    eng = await make_engine(lab_routes(out), route=True, http=True,
                            extra_env={"PARCOURS_MAPPINGS_DIR": str(mapping_dir)})
    from tests.ui.timeline_support import create_account

    account = create_account(eng.engine, "operator-lab", "operator")
    for f in sorted(DATA.glob("oru_*_full.hl7")):
        for raw in split_messages(f.read_bytes()).messages:
            await eng.send(raw)
    await wait_status(eng, 3)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port(eng)}") as c:
        await login(c, account)
        page = await c.get("/ui/backlog")
        assert page.status_code == 200 and "Accept mapping" in page.text
        import re

        first = re.search(r'name="sender" value="([^"]+)">\s*<input type="hidden" '
                          r'name="code" value="([^"]+)"', page.text)
        assert first
        sender, code = first.groups()
        best = re.search(r'name="loinc" value="([^"]+)" checked', page.text)
        assert best
        # issue #15: a low-score candidate is shown, marked, and never pre-selected
        assert not re.search(r'checked>\s*<b class="mono">[^<]+</b>[^<]*'
                             r'<span class="muted">score [-\d.]+ · low', page.text)
        bad = await c.post("/ui/backlog/accept", data={
            "csrf": csrf_of(page.text), "sender": sender, "code": code,
            "loinc_other": "1234-0"})
        assert bad.status_code == 422 and "refused" in bad.text
        r = await c.post("/ui/backlog/accept", data={
            "csrf": csrf_of(page.text), "sender": sender, "code": code,
            "loinc": best.group(1)})
        assert r.status_code == 303 and r.headers["location"] == "/ui/backlog?done=mapped&n=1"
        for _ in range(200):
            if list(out.glob("*_g1.json")):
                break
            await asyncio.sleep(0.05)
        assert list(out.glob("*_g1.json")), "the message carrying the code was reprocessed"
        page = await c.get("/ui/backlog")
        assert f'name="code" value="{code}"' not in page.text
