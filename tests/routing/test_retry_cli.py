"""`parcours retry` says when a retry cannot help, with the real reason, and exits 1."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine.store.models import deliveries
from tests.conftest import corpus
from tests.routing.test_delivery_e2e import wait_status
from transformers.hl7.ack import read_ack

PARCOURS = [sys.executable, "-c", "from engine.cli.main import main; main()"]


def _routes(out: Path) -> str:
    return f"""\
version: 1
channels:
  main: {{type: mllp, host: 127.0.0.1, port: 0}}
destinations:
  files: {{type: file, path: "{out}", filename: "{{message_id}}.{{ext}}"}}
  timeline: {{type: timeline}}
routes:
  - {{name: archive, when: {{message_type: MDM}}, to: [files]}}
  - {{name: documents-timeline, when: {{message_type: MDM}}, transform: [mdm_events],
      to: [timeline]}}
"""


def _cli(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PARCOURS_STORE_URL": store_url, "PATH": "/usr/bin:/bin"}
    return subprocess.run([*PARCOURS, *args], capture_output=True, text=True, env=env,
                          timeout=60)


async def test_retry_refuses_delivered_and_route_failures(make_engine: Any, store_url: str,
                                                          tmp_path: Path) -> None:
    # FHIR-Converter's MDM^T02 carries its report as text, not a CDA: mdm_events fails.
    raw = (corpus("hl7v2", "fhir-converter") / "MDM-T02-01.hl7").read_bytes()
    eng = await make_engine(_routes(tmp_path / "out"), store_url=store_url, route=True)
    assert read_ack(await eng.send(raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")))[0] \
        == "AA"
    await wait_status(eng, 1, ("failed",))
    with eng.store.engine.connect() as conn:
        by_route = {r.route: r.id for r in conn.execute(
            select(deliveries.c.id, deliveries.c.route))}
    done = await asyncio.to_thread(_cli, eng.store.url, "retry", str(by_route["archive"]))
    assert done.returncode == 1
    assert "already delivered" in done.stderr and "queued" not in done.stdout
    failed = await asyncio.to_thread(_cli, eng.store.url, "retry",
                                     str(by_route["documents-timeline"]))
    assert failed.returncode == 1 and "queued" not in failed.stdout
    assert "MDM without a CDA document" in failed.stderr  # the transformer's own error
    assert "parcours replay" in failed.stderr
    with eng.store.engine.connect() as conn:
        row = conn.execute(select(deliveries.c.status, deliveries.c.last_error).where(
            deliveries.c.id == by_route["documents-timeline"])).one()
    assert row.status == "dead" and "MDM without a CDA" in row.last_error  # left as it was


async def test_retry_of_a_pending_delivery_says_so(make_engine: Any, tmp_path: Path) -> None:
    raw = (corpus("hl7v2", "fhir-converter") / "MDM-T02-01.hl7").read_bytes()
    eng = await make_engine(_routes(tmp_path / "out"))  # no runner: deliveries stay pending
    await eng.send(raw.replace(b"\n", b"\r"))
    await asyncio.to_thread(eng.engine.router.route_batch)
    with eng.store.engine.connect() as conn:
        pending = conn.execute(select(deliveries.c.id).where(
            deliveries.c.status == "pending")).scalar_one()
    res = await asyncio.to_thread(_cli, eng.store.url, "retry", str(pending), "99999")
    assert res.returncode == 1
    assert f"delivery {pending}: not retried — pending" in res.stderr
    assert "delivery 99999: not found" in res.stderr
