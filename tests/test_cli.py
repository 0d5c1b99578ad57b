"""The `parcours` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import corpus
from tests.intake.test_ack_rules import msg

PARCOURS = [sys.executable, "-c", "from engine.cli.main import main; main()"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PARCOURS, *args], capture_output=True, text=True, timeout=timeout)


def test_serve_help_documents_every_option() -> None:
    out = run("serve", "--help").stdout
    for opt, var in (("--home", "PARCOURS_HOME"), ("--mllp-port", "PARCOURS_MLLP_PORT"),
                     ("--http-port", "PARCOURS_HTTP_PORT"), ("--store-url", "PARCOURS_STORE_URL"),
                     ("--broker-url", "PARCOURS_BROKER_URL"), ("--routes", "PARCOURS_ROUTES")):
        assert opt in out and var in out


async def test_send_reports_codes_and_exit_status(make_engine: Any, tmp_path: Path) -> None:
    import asyncio

    eng = await make_engine()
    good = tmp_path / "good.hl7"
    good.write_text(msg("S-1") + msg("S-2"))
    batch = corpus("hl7v2", "reportstream-batch", "CSV_to_HL7",
                   "sample-batch-pdi-20210608-0001.hl7")
    res = await asyncio.to_thread(run, "send", "--port", str(eng.port()), str(good), str(batch))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sent 22 message(s)" in res.stdout and "AA 2" in res.stdout

    bad = tmp_path / "bad.hl7"
    bad.write_text(msg("S-3", processing="X"))
    res = await asyncio.to_thread(run, "send", "--port", str(eng.port()), str(good), str(bad))
    assert res.returncode == 1
    assert "AR" in res.stdout and "bad.hl7" in res.stdout


def test_send_unreadable_file_and_no_server(tmp_path: Path) -> None:
    res = run("send", "--port", "1", str(tmp_path / "missing.hl7"))
    assert res.returncode == 2 and "cannot read" in res.stderr
    f = tmp_path / "m.hl7"
    f.write_text(msg("X"))
    res = run("send", "--port", "1", "--timeout", "2", str(f))
    assert res.returncode == 1 and "ERROR" in res.stdout


def test_routes_check_default_file_and_errors(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    res = run("routes", "check", str(root / "routes.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr
    bad = tmp_path / "routes.yaml"
    bad.write_text("version: 1\nchannels:\n  main:\n    type: mllp\n    prot: 2575\n")
    res = run("routes", "check", str(bad))
    assert res.returncode == 1
    assert f"{bad}:5:5: unknown key 'prot'" in res.stdout
