"""Issue #15: an accepted mapping reaches the clinician. `parcours mappings accept` reprocesses
the results as a new generation of deliveries; the timeline applies that generation over the
first one (the observation gets its LOINC code in /api/v1), while the same delivery again —
or an older generation arriving late — changes nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from connectors.mllp.client import MLLPClient
from engine.store.models import deliveries
from engine.timeline import auth
from transformers.hl7.ack import read_ack

ROOT = Path(__file__).resolve().parents[2]
PARCOURS = [sys.executable, "-c", "from engine.cli.main import main; main()"]

ORU = "\r".join([
    "MSH|^~\\&|SIL|LABO-BIO-PARIS15|PARCOURS|TERR-ESANTE-DEMO|20250114093000||ORU^R01^ORU_R01"
    "|GEN-1|P|2.5.1|||AL|NE||UNICODE UTF-8",
    "PID|1||GEN000777^^^PARCOURS-DEMO^PI||PATIENT^GENERATION||19700101|F",
    "OBR|1|ORD-G1|RES-G1|HEMATO^Hémogramme^L|||20250114080000",
    "OBX|1|NM|ZHB^Hémoglobine (nouvel automate)^L||13,5|g/dL|12,0-16,0||||F|||20250114080000"
    "|||||||||LABO-BIO-PARIS15",
]) + "\r"


def routes(out: Path) -> str:
    return f"""\
version: 1
channels:
  main: {{type: mllp, host: 127.0.0.1, port: 0}}
destinations:
  lab: {{type: file, path: "{out}", filename: "{{message_id}}_g{{generation}}.json"}}
  timeline: {{type: timeline}}
routes:
  - name: lab-normalised
    when: {{message_type: ORU}}
    transform: [normalise_lab]
    to: [lab]
  - name: lab-timeline
    when: {{message_type: ORU}}
    transform: [oru_events]
    to: [timeline]
"""


def _timeline_deliveries(eng: Any) -> list[dict[str, Any]]:
    with eng.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(deliveries.c.generation, deliveries.c.status, deliveries.c.response,
                   deliveries.c.last_error)
            .where(deliveries.c.destination == "timeline").order_by(deliveries.c.id))
            .mappings()]


async def _settled(eng: Any, count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(400):
        rows = _timeline_deliveries(eng)
        if len(rows) >= count and all(r["status"] == "delivered" for r in rows):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(rows)


async def test_accepted_mapping_replaces_what_the_clinician_reads(
        make_engine: Any, tmp_path: Path, store_url: str) -> None:
    mapping_dir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mapping_dir, ignore=shutil.ignore_patterns("*.py"))
    out = tmp_path / "out"
    rf = tmp_path / "routes.yaml"
    rf.write_text(routes(out))
    eng = await make_engine(rf.read_text(), route=True, http=True, store_url=store_url,
                            extra_env={"PARCOURS_MAPPINGS_DIR": str(mapping_dir)})
    base = f"http://127.0.0.1:{eng.engine._http.servers[0].sockets[0].getsockname()[1]}"
    async with MLLPClient("127.0.0.1", eng.port()) as c:
        assert read_ack(await c.send(ORU.encode()))[0] in ("AA", "CA")
    [first] = await _settled(eng, 1)
    assert first["generation"] == 0

    _, admin = await asyncio.to_thread(auth.add_user, eng.store.engine, "root", "admin")
    headers = {"Authorization": f"Bearer {admin}"}

    async def result_observations(client: httpx.AsyncClient) -> list[dict[str, Any]]:
        r = await client.get("/api/v1/patients", headers=headers,
                             params={"identifier": "PARCOURS-DEMO|GEN000777"})
        assert r.status_code == 200, r.text
        [patient] = r.json()["patients"]
        r = await client.get(f"/api/v1/patients/{patient['id']}/timeline", headers=headers,
                             params={"type": "result"})
        assert r.status_code == 200, r.text
        [event] = r.json()["events"]
        return list(event["observations"])

    from tests.ui.conftest import login
    from tests.ui.timeline_support import create_account

    ui_admin = await asyncio.to_thread(create_account, eng.engine, "ui-admin", "admin")
    async with httpx.AsyncClient(base_url=base) as client, \
            httpx.AsyncClient(base_url=base, timeout=30) as ui:
        assert (await login(ui, ui_admin)).status_code in (200, 303)
        [obs] = await result_observations(client)
        assert obs["loinc"] is None and obs["outcome"] == "as_received"
        pid = (await client.get("/api/v1/patients", headers=headers, params={
            "identifier": "PARCOURS-DEMO|GEN000777"})).json()["patients"][0]["id"]
        page = await ui.get(f"/ui/patients/{pid}")
        assert page.status_code == 200 and "13,5" in page.text and "718-7" not in page.text
        assert obs["value_text"] == "13,5" and obs["unit"] == "g/dL"

        env = {"PARCOURS_STORE_URL": eng.store.url, "PARCOURS_MAPPINGS_DIR": str(mapping_dir),
               "PARCOURS_ROUTES": str(rf), "PATH": "/usr/bin:/bin"}
        acc = await asyncio.to_thread(
            subprocess.run, [*PARCOURS, "mappings", "accept", "LABO-BIO-PARIS15", "ZHB",
                             "718-7"], capture_output=True, text=True, env=env, timeout=120)
        assert acc.returncode == 0, acc.stdout + acc.stderr
        assert "reprocessed 1 message(s): 2 new deliveries" in acc.stdout

        rows = await _settled(eng, 2)
        assert [r["generation"] for r in rows] == [0, 1]
        assert rows[1]["response"] is None or "skipped" not in (rows[1]["response"] or "")
        [obs] = await result_observations(client)
        assert (obs["loinc"], obs["outcome"], obs["unit"], obs["value"]) == (
            "718-7", "normalised", "g/L", "135")
        assert (obs["reference_low"], obs["reference_high"]) == ("120", "160")
        page = await ui.get(f"/ui/patients/{pid}")
        assert page.status_code == 200 and "718-7" in page.text and "135" in page.text
        r = await client.get(f"/api/v1/patients/{pid}/observations", headers=headers,
                             params={"loinc": "718-7"})
        assert r.status_code == 200 and [p["value"] for p in r.json()["points"]] == ["135"]

    # The same delivery again, and the first generation arriving late: no effect.
    tl = eng.engine.timeline
    from engine.store.models import messages
    from tests.timeline.conftest import events_of

    with eng.store.engine.connect() as conn:
        mid = int(conn.execute(select(messages.c.id)).scalar_one())
    stale = events_of(ORU.encode(), mid)  # the mapping is in place: a "gen 1" envelope
    assert await asyncio.to_thread(tl.apply, stale, 1) == {"applied": 0, "skipped": 1}
    old = json.loads(json.dumps(stale))
    for o in old["events"][0]["observations"]:
        o.update(loinc=None, outcome="as_received", value=None, unit="g/dL")
    assert await asyncio.to_thread(tl.apply, old, 0) == {"applied": 0, "skipped": 1}
    async with httpx.AsyncClient(base_url=base) as client:
        [obs] = await result_observations(client)
        assert obs["loinc"] == "718-7"
