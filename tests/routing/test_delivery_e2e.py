"""End to end on the embedded default: MLLP in → routed → files out; operator commands;
reload under load."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from connectors.mllp.client import MLLPClient
from engine.store.models import deliveries, messages
from tests.intake.test_ack_rules import msg
from transformers.hl7.ack import read_ack

PARCOURS = [sys.executable, "-c", "from engine.cli.main import main; main()"]


def routes(out: Path, extra_routes: str = "", port: int = 0) -> str:
    return f"""\
version: 1
channels:
  main: {{type: mllp, host: 127.0.0.1, port: {port}}}
destinations:
  files: {{type: file, path: "{out}", filename: "{{message_id}}_{{route}}.{{ext}}"}}
  json: {{type: file, path: "{out}/json", filename: "{{message_id}}.json"}}
  broken: {{type: file, path: "/proc/parcours-cannot-write",
            retry: {{max_attempts: 2, initial_delay: 0.05}}}}
routes:
  - name: adt
    when: {{message_type: ADT}}
    to: [files]
  - name: json
    when: {{message_type: ADT}}
    transform: [event_summary]
    to: [json]
{extra_routes}"""


async def wait_status(eng: Any, count: int, statuses: tuple[str, ...] = ("done",),
                      timeout: float = 20.0) -> list[dict[str, Any]]:
    for _ in range(int(timeout / 0.05)):
        with eng.store.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(
                select(messages.c.id, messages.c.status, messages.c.control_id)).mappings()]
        if len(rows) >= count and all(r["status"] in statuses for r in rows):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"not all {count} messages reached {statuses}: {rows}")


async def test_messages_are_routed_and_written_once(make_engine: Any, store_url: str,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    eng = await make_engine(routes(out), store_url=store_url, route=True)
    async with MLLPClient("127.0.0.1", eng.port()) as c:
        for i in range(30):
            await c.send(msg(f"E-{i}").encode())
        await c.send(msg("E-0").encode())  # a resend: not routed twice
        oru = msg("O-1", mtype="ORU^R01")
        assert read_ack(await c.send(oru.encode()))[0] == "AA"
    rows = await wait_status(eng, 32, ("done", "duplicate", "unrouted"))
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    assert by_status == {"done": 30, "duplicate": 1, "unrouted": 1}
    files = sorted(p.name for p in out.glob("*.hl7"))
    assert len(files) == 30 and len(list((out / "json").glob("*.json"))) == 30
    first = min(r["id"] for r in rows)
    assert (out / f"{first}_adt.hl7").read_bytes() == msg("E-0").encode()
    with eng.store.engine.connect() as conn:
        assert conn.execute(select(deliveries.c.status).distinct()).scalars().all() == \
            ["delivered"]


async def test_dead_letter_then_cli_lists_and_retries(make_engine: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    text = routes(out, "  - name: to-broken\n    when: {message_type: ADT}\n    to: [broken]\n")
    eng = await make_engine(text, route=True)
    async with MLLPClient("127.0.0.1", eng.port()) as c:
        await c.send(msg("D-1").encode())
    rows = await wait_status(eng, 1, ("failed",))
    env = {"PARCOURS_STORE_URL": eng.store.url, "PATH": "/usr/bin:/bin"}
    listing = await asyncio.to_thread(
        subprocess.run, [*PARCOURS, "deliveries", "--status", "failed"],
        capture_output=True, text=True, env=env, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "dead" in listing.stdout and "broken / to-broken" in listing.stdout
    assert "gave up after 2 attempts" in listing.stdout
    with eng.store.engine.connect() as conn:
        dead_id = conn.execute(select(deliveries.c.id).where(
            deliveries.c.status == "dead")).scalar_one()
    # The operator fixes the destination (a reload pointing it somewhere writable)…
    fixed = text.replace("/proc/parcours-cannot-write", str(out / "fixed"))
    rf = tmp_path / "routes.yaml"
    rf.write_text(fixed)
    object.__setattr__(eng.engine.settings, "routes_file", rf)
    assert (await eng.engine.reload())["ok"]
    # …and retries the delivery from the command line; the running engine picks it up.
    res = await asyncio.to_thread(subprocess.run, [*PARCOURS, "retry", str(dead_id)],
                                  capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and f"delivery {dead_id}: queued" in res.stdout
    await wait_status(eng, 1, ("done",))
    assert len(list((out / "fixed").rglob("*.hl7"))) == 1
    assert rows[0]["status"] == "failed"


async def test_replay_routes_again_as_new_generation(make_engine: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    eng = await make_engine(routes(out), route=True)
    async with MLLPClient("127.0.0.1", eng.port()) as c:
        await c.send(msg("RP-1").encode())
    [row] = await wait_status(eng, 1)
    rf = tmp_path / "r.yaml"
    rf.write_text(routes(out))
    env = {"PARCOURS_STORE_URL": eng.store.url, "PARCOURS_ROUTES": str(rf), "PATH": "/usr/bin:/bin"}
    res = await asyncio.to_thread(
        subprocess.run, [*PARCOURS, "replay", str(row["id"]), "999999"], capture_output=True,
        text=True, timeout=60, env=env)
    assert res.returncode == 1  # 999999 does not exist
    assert f"message {row['id']}: 2 new deliveries" in res.stdout
    assert "message 999999: not found" in res.stderr
    await wait_status(eng, 1)
    with eng.store.engine.connect() as conn:
        gens = conn.execute(select(deliveries.c.generation, deliveries.c.status)).all()
    assert sorted(gens) == [(0, "delivered"), (0, "delivered"), (1, "delivered"),
                            (1, "delivered")]


async def test_reload_under_load_drops_nothing(make_engine: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rf = tmp_path / "routes.yaml"
    rf.write_text(routes(out))
    eng = await make_engine(rf.read_text(), route=True, http=True)
    object.__setattr__(eng.engine.settings, "routes_file", rf)
    http_port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    sent: list[str] = []
    stop = asyncio.Event()

    async def sender(n: int) -> None:
        async with MLLPClient("127.0.0.1", eng.port()) as c:  # one connection for the whole run
            i = 0
            while not stop.is_set():
                cid = f"L{n}-{i}"
                assert read_ack(await c.send(msg(cid).encode()))[0] == "AA"
                sent.append(cid)
                i += 1
            assert c.connections_opened == 1  # never dropped by a reload

    tasks = [asyncio.create_task(sender(n)) for n in range(4)]
    async with httpx.AsyncClient() as client:
        for i in range(6):
            await asyncio.sleep(0.15)
            if i % 2:
                rf.write_text(routes(out).replace("to: [files]", "to: [files, json]"))
            else:
                rf.write_text(routes(out))
            r = await client.post(f"http://127.0.0.1:{http_port}/api/routes/reload")
            assert r.status_code == 200, r.text
        rf.write_text("version: 1\nchannels: {}\n")  # broken: refused, old routes stay
        r = await client.post(f"http://127.0.0.1:{http_port}/api/routes/reload")
        assert r.status_code == 422 and "channels" in r.text
        await asyncio.sleep(0.15)
    stop.set()
    await asyncio.gather(*tasks)
    rows = await wait_status(eng, len(sent))
    assert sorted(r["control_id"] for r in rows) == sorted(sent)
    assert len(list(out.glob("*.hl7"))) == len(sent)


async def test_enhanced_mode_application_ack_follows_commit_ack(make_engine: Any,
                                                                tmp_path: Path) -> None:
    from connectors.mllp.framing import Frame, FrameDecoder, frame

    eng = await make_engine(routes(tmp_path / "out"), route=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", eng.port())
    decoder = FrameDecoder()

    async def next_frame() -> bytes:
        while True:
            for ev in pending:
                pending.remove(ev)
                return ev
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "connection closed"
            pending.extend(e.payload for e in decoder.feed(data) if isinstance(e, Frame))

    pending: list[bytes] = []
    writer.write(frame(msg("EN-1", accept="AL", app_ack="AL").encode()))
    assert read_ack(await next_frame())[:2] == ("CA", "EN-1")  # commit: stored
    assert read_ack(await next_frame())[:2] == ("AA", "EN-1")  # application: routed
    writer.write(frame(msg("EN-2", accept="NE", app_ack="ER").encode()))  # ER: only errors
    writer.write(frame(msg("EN-3", accept="AL", app_ack="NE").encode()))
    assert read_ack(await next_frame())[:2] == ("CA", "EN-3")
    writer.close()
    await wait_status(eng, 3)
    with eng.store.engine.connect() as conn:
        got = {r.control_id: (r.app_ack_code, r.app_ack_status) for r in conn.execute(
            select(messages.c.control_id, messages.c.app_ack_code, messages.c.app_ack_status))}
    assert got == {"EN-1": ("AA", "sent"), "EN-2": ("AA", "not-required"),
                   "EN-3": (None, None)}


async def test_disabled_destination_queues_nothing(make_engine: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    text = routes(out).replace(
        '  json: {type: file, path: "' + str(out) + '/json", filename: "{message_id}.json"}',
        '  json: {type: file, enabled: false, path: "' + str(out)
        + '/json", filename: "{message_id}.json"}')
    assert "enabled: false" in text
    eng = await make_engine(text, route=True)
    async with MLLPClient("127.0.0.1", eng.port()) as c:
        await c.send(msg("DIS-1").encode())
    await wait_status(eng, 1)
    with eng.store.engine.connect() as conn:
        dests = conn.execute(select(deliveries.c.destination)).scalars().all()
    assert dests == ["files"]
    assert "json" not in eng.engine.destinations
    assert not (out / "json").exists()
