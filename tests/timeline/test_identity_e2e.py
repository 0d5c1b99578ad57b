"""End to end (issue #15): CDA files through a folder channel and ADT over MLLP, routed to
the timeline; what the operator sees on /api/v1/conflicts, the dashboard and the CLI, and
what the clinician sees on the timeline."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from engine.timeline import auth
from tests.conftest import routes_text
from tests.ui.conftest import Account, csrf_of, login

from .conftest import read
from .test_identity import GLY, INS_A, INS_B, TSH, other_person


def _routes(folder: Path) -> str:
    return routes_text(
        "  main:\n    type: mllp\n    host: 127.0.0.1\n    port: 0\n"
        f"  drop:\n    type: folder\n    path: {folder}\n    poll_interval: 0.05\n"
        "    settle_seconds: 0\n    patterns: ['*.xml']\n",
        destinations="{timeline: {type: timeline}}",
        routes="""
  - {name: adt-timeline, when: {message_type: ADT}, transform: [adt_events], to: [timeline]}
  - {name: docs-timeline, when: {message_type: [MDM, CDA]}, transform: [mdm_events],
     to: [timeline]}
""")


async def _until(check: Any, what: str, timeout: float = 30.0) -> Any:
    for _ in range(int(timeout / 0.1)):
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"never reached: {what}")


async def test_second_identity_on_a_local_id_is_shown_and_resolved(
        make_engine: Any, store_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    eng = await make_engine(_routes(folder), store_url=store_url, http=True, route=True)
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    db = eng.store.engine
    _, op_token = auth.add_user(db, "vigilance", "operator")
    _, admin_token = auth.add_user(db, "root", "admin")
    (folder / "tsh.xml").write_bytes(read(*TSH))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        admin = {"Authorization": f"Bearer {admin_token}"}
        operator = {"Authorization": f"Bearer {op_token}"}

        async def patient() -> Any:
            r = await c.get("/api/v1/patients", params={"identifier": f"INS|{INS_A}"},
                            headers=admin)
            return r.json()["patients"]

        (p,) = await _until(patient, "first document filed")
        (folder / "gly-other.xml").write_bytes(other_person(read(*GLY)))

        async def conflicts() -> Any:
            r = await c.get("/api/v1/conflicts", headers=operator)
            assert r.status_code == 200, r.text
            return r.json()["conflicts"]

        (conflict,) = await _until(conflicts, "conflict listed")
        ev = conflict["evidence"]
        assert conflict["kind"] == "ins_mismatch" and conflict["held"]
        assert conflict["patient_id"] == p["id"] and conflict["held_events"] == ["document"]
        assert (ev["held_ins"], ev["arriving_ins"]) == (INS_A, INS_B)
        assert (ev["held"]["birth_date"], ev["arriving"]["birth_date"]) == ("19790328",
                                                                             "19770714")
        # nothing landed on the record meanwhile, and the identity is unchanged
        t = (await c.get(f"/api/v1/patients/{p['id']}/timeline", headers=admin)).json()
        assert [e["type"] for e in t["events"]] == ["document"]
        assert t["patient"]["ins"] == INS_A and t["patient"]["family"] == "PAT-TROIS"
        assert (await c.get("/api/v1/patients", params={"identifier": f"INS|{INS_B}"},
                            headers=admin)).json()["patients"] == []
        # a clinician may not list conflicts
        _, doc_token = auth.add_user(db, "dr", "clinician", "801234567897")
        r = await c.get("/api/v1/conflicts", headers={"Authorization": f"Bearer {doc_token}"})
        assert r.status_code == 403

        # the dashboard shows it with its evidence
        await login(c, Account("vigilance", op_token, "operator"))
        page = await c.get("/ui/dashboard")
        assert page.status_code == 200
        assert f'data-id="{conflict["id"]}"' in page.text and INS_B in page.text
        assert "NESSI" in page.text and 'id="card-conflicts"' in page.text
        # and resolves it: the held document goes to the record, identity untouched
        r = await c.post(f"/ui/conflicts/{conflict['id']}/resolve",
                         data={"csrf": csrf_of(page.text), "action": "apply"},
                         follow_redirects=False)
        assert r.status_code == 303
        page = await c.get(r.headers["location"])
        assert "Conflict resolved." in page.text and 'id="no-conflicts"' in page.text
        t = (await c.get(f"/api/v1/patients/{p['id']}/timeline", headers=admin)).json()
        assert [e["type"] for e in t["events"]] == ["document", "document"]
        assert t["patient"]["ins"] == INS_A
        r = await c.post(f"/api/v1/conflicts/{conflict['id']}/resolve",
                         json={"action": "dismiss"}, headers=operator)
        assert r.status_code == 409
        r = await c.get("/api/v1/conflicts", params={"status": "resolved"}, headers=operator)
        (done,) = r.json()["conflicts"]
        assert done["resolved_by"] == "vigilance" and "applied to patient" in done["resolution"]


async def test_ins_withdrawal_over_mllp(make_engine: Any, store_url: str,
                                        tmp_path: Path) -> None:
    from .conftest import ANS, edit

    folder = tmp_path / "drop"
    folder.mkdir()
    eng = await make_engine(_routes(folder), store_url=store_url, http=True, route=True)
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    _, admin_token = auth.add_user(eng.store.engine, "root", "admin")
    adm = read(*ANS, "SGL", "admission.er7")
    a47 = edit(edit(adm, "MSH", 9, "ADT^A47^ADT_A30"), "PID", 3,
               '000003^^^CHU-X&000897406&N^PI~""^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10'
               '&ISO^INS')
    a47 = edit(a47, "MSH", 10, "3976").replace(
        b"PV1|", b"MRG|279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
        b"\rPV1|", 1)
    for raw in (adm, a47):
        ack = await eng.send(raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r"))
        assert b"MSA|AA" in ack
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                 headers={"Authorization": f"Bearer {admin_token}"}) as c:
        async def withdrawn() -> Any:
            r = await c.get("/api/v1/patients", params={"identifier": "000897406|000003"})
            found = r.json()["patients"]
            return found if found and found[0]["ins"] is None else None

        (p,) = await _until(withdrawn, "INS withdrawn")
        assert [i["type"] for i in p["identifiers"]] == ["PI"]
        assert '""' not in str(p)
        r = await c.get("/api/v1/patients", params={"identifier": f"INS|{INS_A}"})
        assert r.json()["patients"] == []
