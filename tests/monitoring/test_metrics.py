"""/metrics exposes what the dashboards and alert rules use, with bounded labels."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import yaml

from connectors.mllp.client import MLLPClient
from tests.intake.test_ack_rules import msg
from tests.routing.test_delivery_e2e import routes, wait_status

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\b(parcours_[a-z0-9_]+)\b")


def referenced(expr: str) -> set[str]:
    return set(NAME.findall(expr))


def dashboard_exprs() -> list[str]:
    dash = json.loads((ROOT / "monitoring" / "grafana-dashboard.json").read_text())
    assert dash["panels"], "dashboard has no panels"
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text())
    exprs = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            exprs.append(rule["expr"])
    return exprs


async def test_metrics_endpoint_and_references(make_engine: Any, tmp_path: Path) -> None:
    eng = await make_engine(routes(tmp_path / "out"), route=True, http=True)
    async with MLLPClient("127.0.0.1", eng.port()) as c:
        for i in range(5):
            await c.send(msg(f"M-{i}").encode())
        await c.send(msg("M-X", processing="X").encode())
    await wait_status(eng, 6, ("done", "rejected"))
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    body = r.text
    assert 'parcours_channel_messages_received_total{channel="main"} 6.0' in body
    assert 'parcours_channel_acks_sent_total{channel="main",code="AA"} 5.0' in body
    assert 'parcours_channel_acks_sent_total{channel="main",code="AR"} 1.0' in body
    assert 'parcours_destination_delivered_total{destination="files"} 5.0' in body
    assert 'parcours_channel_ack_latency_seconds_count{channel="main"} 6.0' in body
    assert "parcours_destination_end_to_end_latency_seconds_bucket" in body
    # No identifiers as labels: only these label names appear.
    labels = set(re.findall(r"[{,]([a-z_]+)=", body))
    assert labels <= {"channel", "code", "destination", "outcome", "status", "type", "le",
                      "stage"}
    # CPU by stage, measured in the threads doing the work (bench/pipeline.py reads these).
    stages = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'parcours_stage_cpu_seconds_total\{stage="([^"]+)"\} ([0-9.e+-]+)', body)}
    assert {"event-loop", "intake:group-commit", "router", "recorder", "destination:files",
            "destination:json", "transformer:event_summary"} <= set(stages), stages
    assert stages["router"] > 0 and stages["destination:files"] > 0
    assert stages["transformer:event_summary"] > 0

    exposed = eng.engine.metrics.names()
    for expr in dashboard_exprs() + alert_exprs():
        missing = referenced(expr) - exposed
        assert not missing, f"{expr!r} uses metrics the engine does not expose: {missing}"
    for name in exposed:
        assert re.fullmatch(r"parcours_[a-z0-9_]+", name)
        if name.endswith("_total"):
            continue
        assert not name.endswith("_count") or "seconds" in name or "latency" in name
