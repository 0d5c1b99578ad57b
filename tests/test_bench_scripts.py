"""The benchmark scripts still run (tiny sizes, no figures checked: benchmarks are not tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(180)


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=170)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_intake_bench_runs_every_server_kind() -> None:
    out = run("bench/intake.py", "--messages", "40", "--connections", "2",
              "--servers", "bare", "listener", "decide", "parcours", "--sqlite-normal")
    rows = [line for line in out.splitlines() if line.startswith("| (")]
    assert [r.split(" |")[0] for r in rows] == [
        "| (a) bare asyncio, fixed ACK",
        "| (c1) Parcours listener, fixed ACK, no store",
        "| (c2) Parcours listener + intake decision, no store",
        "| (c) Parcours intake, durable (SQLite)",
        "| (c3) Parcours intake, SQLite synchronous=NORMAL (not durable)",
    ]
    assert "goal ≥ 40 %" not in out  # the goal line is for 8 connections only


def test_store_floor_bench_runs() -> None:
    out = run("bench/store_floor.py", "--batches", "3", "--batch", "2")
    assert [line.split(" |")[0] for line in out.splitlines()[2:]] == ["| FULL", "| NORMAL",
                                                                       "| OFF"]


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_scale_bench_runs_on_postgres_and_rabbitmq() -> None:
    from tests.conftest import PG_HOST, PG_PORT, require_service
    from tests.routing.test_rabbitmq import _broker_address

    require_service("PostgreSQL", PG_HOST, PG_PORT)
    require_service("RabbitMQ", *_broker_address())
    out = run("bench/scale.py", "--messages", "30", "--processes", "1", "2")
    rows = [line.split(" |")[:2] for line in out.splitlines() if line.startswith("| 1 |")
            or line.startswith("| 2 |")]
    assert rows == [["| 1", " 8"], ["| 2", " 4 + 4"]]
