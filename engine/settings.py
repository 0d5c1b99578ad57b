"""Process settings from the environment (the few things that differ per machine).

Everything about message flow lives in routes.yaml; this is only where things are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    host: str
    mllp_port: int
    http_port: int
    store_url: str
    broker_url: str
    routes_file: Path
    log_level: str
    mappings_dir: Path = Path(__file__).resolve().parent.parent / "mappings"
    partitions: int = 8
    sweep_interval: float = 2.0
    lease_seconds: float = 3.0
    # The worker process (engine/delivery/worker.py) yields the CPU to the listener: a sender
    # waits for its ACK, nobody waits for a delivery a millisecond sooner.
    worker_nice: int = 10
    # NORMAL: the worker's commits are fsynced together once a second (engine/store/wal_sync.py).
    worker_synchronous: str = "NORMAL"
    # A worker whose resident memory passed this (MiB) finishes what it has in flight and is
    # replaced by a fresh one (0: never). The bound on what no cache of ours controls:
    # libxml2's per-thread name dictionary, the C allocator's arenas.
    worker_max_rss_mb: int = 1024

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        e = dict(os.environ if env is None else env)
        home = Path(e.get("PARCOURS_HOME", "./var")).resolve()
        values: dict[str, object] = {
            "home": home,
            "host": e.get("PARCOURS_HOST", "0.0.0.0"),
            "mllp_port": int(e.get("PARCOURS_MLLP_PORT", "2575")),
            "http_port": int(e.get("PARCOURS_HTTP_PORT", "8080")),
            "store_url": e.get("PARCOURS_STORE_URL") or f"sqlite:///{home / 'parcours.db'}",
            "broker_url": e.get("PARCOURS_BROKER_URL", "memory://"),
            "routes_file": Path(e.get("PARCOURS_ROUTES", "routes.yaml")),
            "log_level": e.get("PARCOURS_LOG_LEVEL", "INFO"),
            "partitions": int(e.get("PARCOURS_PARTITIONS", "8")),
            "mappings_dir": Path(e.get("PARCOURS_MAPPINGS_DIR")
                                 or Path(__file__).resolve().parent.parent / "mappings"),
            "sweep_interval": float(e.get("PARCOURS_SWEEP_INTERVAL", "2.0")),
            # A partition's lease: a killed process's partitions are taken over after it.
            "lease_seconds": float(e.get("PARCOURS_LEASE_SECONDS", "3.0")),
            "worker_nice": int(e.get("PARCOURS_WORKER_NICE", "10")),
            "worker_max_rss_mb": int(e.get("PARCOURS_WORKER_MAX_RSS_MB", "1024")),
            "worker_synchronous": "FULL" if e.get(
                "PARCOURS_WORKER_SQLITE_SYNCHRONOUS", "NORMAL").upper() == "FULL" else "NORMAL",
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def interpolation_env(self) -> dict[str, str]:
        """Variables routes.yaml may use, with the process settings filled in as defaults."""
        env = dict(os.environ)
        env.setdefault("PARCOURS_HOME", str(self.home))
        env["PARCOURS_HOME"] = str(self.home)
        env["PARCOURS_MLLP_PORT"] = str(self.mllp_port)
        env["PARCOURS_HTTP_PORT"] = str(self.http_port)
        return env
