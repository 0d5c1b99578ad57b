"""`parcours referrals` and `parcours routes test` on a REF, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .support import DAC, ref

PARCOURS = [sys.executable, "-c", "from engine.cli.main import main; main()"]
ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PARCOURS_HOME": str(tmp_path / "home"),
           "PARCOURS_STORE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    return subprocess.run([*PARCOURS, *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=ROOT)


def test_structures_and_members(tmp_path: Path) -> None:
    res = run(tmp_path, "referrals", "structure-add", DAC, "DAC Paris Centre")
    assert res.returncode == 0 and "declared" in res.stdout
    assert run(tmp_path, "referrals", "structures").stdout == f"{DAC}\tDAC Paris Centre\n"
    res = run(tmp_path, "referrals", "member-add", DAC, "nobody")
    assert res.returncode == 1 and "no user 'nobody'" in res.stderr
    assert run(tmp_path, "users", "add", "coord", "--role", "clinician").returncode == 0
    assert run(tmp_path, "referrals", "member-add", DAC, "coord").returncode == 0
    assert run(tmp_path, "referrals", "list").stdout == ""


def test_routes_test_shows_timeline_and_rri(tmp_path: Path) -> None:
    sample = tmp_path / "ref.hl7"
    sample.write_bytes(ref("I12", "RT-1"))
    res = run(tmp_path, "routes", "test", str(sample), "--routes", str(ROOT / "routes.yaml"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "route referrals-timeline: MATCH" in out
    assert "→ destination timeline (application/json" in out and '"type": "referral"' in out
    assert "route referral-response: MATCH" in out
    assert "→ destination referral-replies (application/hl7-v2" in out
    assert "      MSA|AA|RT-1" in out and "      RF1|P|||||DEM-1^^1.2.250.1.999.1" in out
