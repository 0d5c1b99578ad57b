"""The scaled compose file cannot run here (no Docker engine): check what can be checked —
the engines agree on store, bus and partitions, Prometheus scrapes every engine on the port
it serves /metrics on, and the files it mounts exist."""

from __future__ import annotations

from pathlib import Path

import yaml

from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_compose_engines_share_store_bus_and_partitions_and_are_all_scraped() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    engines = {n: s for n, s in services.items() if s.get("build") == "."}
    assert len(engines) == 2
    envs = [s["environment"] for s in engines.values()]
    for key in ("PARCOURS_STORE_URL", "PARCOURS_BROKER_URL", "PARCOURS_PARTITIONS"):
        assert len({e[key] for e in envs}) == 1, key
    assert envs[0]["PARCOURS_STORE_URL"].startswith("postgresql+psycopg://")
    assert envs[0]["PARCOURS_BROKER_URL"].startswith("amqp://")
    settings = Settings.from_env(envs[0])
    assert settings.lease_seconds == float(envs[0]["PARCOURS_LEASE_SECONDS"])
    for s in engines.values():
        assert set(s["depends_on"]) == {"postgres", "rabbitmq"}
        assert any(p.endswith(f":{settings.http_port}") for p in s["ports"])
    for s in services.values():
        for v in s.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith("./"):
                assert (ROOT / src).is_file(), src
    prom = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]}
    assert targets == {f"{n}:{settings.http_port}" for n in engines}
