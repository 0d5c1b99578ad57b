"""The amqp destination against the real RabbitMQ, and reload by SIGHUP of a running engine."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from kombu import Connection, Exchange, Queue

from connectors.mllp.client import MLLPClient
from tests.conftest import RABBIT_URL, require_service
from tests.intake.test_ack_rules import msg
from tests.routing.test_delivery_e2e import wait_status
from transformers.hl7.ack import read_ack


async def test_amqp_destination_publishes_persistent_json(make_engine: Any) -> None:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    exchange_name = f"parcours.test.{uuid.uuid4().hex[:8]}"
    exchange = Exchange(exchange_name, type="topic", durable=True)
    queue = Queue(f"{exchange_name}.q", exchange=exchange, routing_key="parcours.ADT.#",
                  durable=False, auto_delete=True)
    with Connection(RABBIT_URL) as conn:
        queue.bind(conn.channel()).declare()  # declares the exchange too
        text = f"""\
version: 1
channels:
  main: {{type: mllp, host: 127.0.0.1, port: 0}}
destinations:
  bus: {{type: amqp, url: "{RABBIT_URL}", exchange: {exchange_name}}}
routes:
  - {{name: adt-bus, when: {{message_type: ADT}}, transform: [event_summary], to: [bus]}}
"""
        eng = await make_engine(text, route=True)
        async with MLLPClient("127.0.0.1", eng.port()) as c:
            assert read_ack(await c.send(msg("AMQP-1").encode()))[0] == "AA"
        [row] = await wait_status(eng, 1)
        got: list[Any] = []
        with conn.SimpleQueue(queue) as sq:
            m = sq.get(timeout=10)
            got.append(m)
            m.ack()
        body = json.loads(got[0].body) if isinstance(got[0].body, (str, bytes)) else got[0].body
        assert body["control_id"] == "AMQP-1" and body["type"] == "ADT^A01"
        assert got[0].properties["message_id"] == f"{row['id']}:adt-bus:bus:0"
        assert got[0].properties["delivery_mode"] == 2  # persistent
        assert got[0].delivery_info["routing_key"] == "parcours.ADT.A01"
        conn.channel().exchange_delete(exchange_name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ROUTES = """\
version: 1
channels:
  main: {{type: mllp, host: 127.0.0.1, port: {port}}}
destinations:
  out: {{type: file, path: "{out}"}}
routes:
{routes}
"""


async def test_sighup_reloads_and_a_bad_file_keeps_the_running_routes(tmp_path: Path) -> None:
    mllp, http = _free_port(), _free_port()
    rf = tmp_path / "routes.yaml"
    out = tmp_path / "out"
    rf.write_text(ROUTES.format(port=mllp, out=out, routes="  - {name: one, to: [out]}"))
    env = {**os.environ, "PARCOURS_HOME": str(tmp_path / "home"), "PARCOURS_ROUTES": str(rf),
           "PARCOURS_HTTP_PORT": str(http), "PARCOURS_MLLP_PORT": str(mllp)}
    proc = subprocess.Popen([sys.executable, "-c", "from engine.cli.main import main; main()",
                             "serve", "--host", "127.0.0.1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http}") as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "engine did not start"
                await asyncio.sleep(0.2)
            async with MLLPClient("127.0.0.1", mllp) as c:  # stays open across reloads
                assert read_ack(await c.send(msg("H-1").encode()))[0] == "AA"
                rf.write_text(ROUTES.format(port=mllp, out=out, routes=(
                    "  - {name: one, to: [out]}\n  - {name: two, to: [out]}")))
                proc.send_signal(signal.SIGHUP)
                for _ in range(50):
                    routes = (await client.get("/api/routes")).json()
                    if routes["routes"] == ["one", "two"]:
                        break
                    await asyncio.sleep(0.1)
                assert routes["routes"] == ["one", "two"] and routes["last_reload"]["ok"]
                rf.write_text("version: 1\nchannels: {}\nroutes: [{name: x}]\n")
                proc.send_signal(signal.SIGHUP)
                for _ in range(50):
                    routes = (await client.get("/api/routes")).json()
                    if not routes["last_reload"]["ok"]:
                        break
                    await asyncio.sleep(0.1)
                assert not routes["last_reload"]["ok"]
                assert any("routes.yaml" in p for p in routes["last_reload"]["problems"])
                assert routes["routes"] == ["one", "two"]  # still running the good ones
                assert read_ack(await c.send(msg("H-2").encode()))[0] == "AA"
                assert c.connections_opened == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
