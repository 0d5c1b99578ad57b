"""parcours users / care-circle / audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli.main import main

from .conftest import ANS, TL, read


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and what the command printed: results on stdout, the one error line on
    stderr (tests/test_cli_errors.py checks which goes where)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    printed = capsys.readouterr()
    return int(exc.value.code or 0), printed.out + printed.err


def test_users_grant_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    monkeypatch.setenv("PARCOURS_STORE_URL", url)
    monkeypatch.setenv("PARCOURS_HOME", str(tmp_path))
    tl = TL(url)
    tl.apply(read(*ANS, "SGL", "admission.er7"), 1)
    code, out = run(["users", "add", "dr", "--role", "clinician"], capsys)
    token = out.strip()
    assert code == 0 and token.startswith("pct_")
    assert token not in (tmp_path / "c.db").read_bytes().decode("latin-1")  # stored hashed
    from engine.timeline import Denied

    who = tl.timeline.auth.authenticate(token)
    assert who is not None and who.role == "clinician"
    with pytest.raises(Denied):
        tl.timeline.read_timeline(who, 1, "cli")
    code, out = run(["care-circle", "grant", "--patient", "1", "--user", "dr", "--by", "t"],
                    capsys)
    assert code == 0
    assert tl.timeline.read_timeline(who, 1, "cli")["total"] >= 2
    code, out = run(["audit", "--patient", "1"], capsys)
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "denied" in lines[1] and "allowed" in lines[0]
    code, out = run(["users", "revoke", "dr"], capsys)
    assert tl.timeline.auth.authenticate(token) is None
    tl.store.close()


def test_conflicts_list_and_resolve(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from .test_identity import GLY, INS_B, TSH, apply_cda, other_person

    url = f"sqlite:///{tmp_path / 'c.db'}"
    monkeypatch.setenv("PARCOURS_STORE_URL", url)
    monkeypatch.setenv("PARCOURS_HOME", str(tmp_path))
    tl = TL(url)
    apply_cda(tl, read(*TSH), 1)
    apply_cda(tl, other_person(read(*GLY)), 2)
    code, out = run(["conflicts", "list"], capsys)
    assert code == 0 and "ins_mismatch" in out and INS_B in out and "NESSI" in out
    code, out = run(["conflicts", "resolve", "1", "--dismiss", "--note", "two persons"], capsys)
    assert code == 0 and "applied to nobody" in out
    code, out = run(["conflicts", "resolve", "1", "--apply"], capsys)
    assert code == 1 and "already resolved" in out
    code, out = run(["conflicts", "resolve", "99", "--apply"], capsys)
    assert code == 1 and "no conflict 99" in out
    code, out = run(["conflicts", "list"], capsys)
    assert code == 0 and "no conflict (open)" in out
