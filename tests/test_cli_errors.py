"""Every `parcours` error is one line on stderr and a non-zero exit, never a traceback
(issue #16). Each command is run as a user runs it: a subprocess, against a real store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from tests.intake.test_ack_rules import msg

PARCOURS = [sys.executable, "-c", "from engine.cli.main import main; main()"]
ROOT = Path(__file__).resolve().parent.parent
ACK = ("MSH|^~\\&|LAB|HOSP|PARCOURS|REGION|20261201120000||ACK^R01^ACK|ACK-1|P|2.5.1\r"
       "MSA|AA|MSG-1\r")


def cli(store_url: str, tmp_path: Path, *args: str, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PARCOURS_STORE_URL": store_url,
           "PARCOURS_HOME": str(tmp_path / "home"), "PARCOURS_ROUTES": str(ROOT / "routes.yaml"),
           "PARCOURS_MAPPINGS_DIR": str(tmp_path / "mappings")}
    return subprocess.run([*PARCOURS, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=tmp_path)


def one_error_line(res: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The contract: exit `code`, exactly one line on stderr, no traceback anywhere."""
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def test_routes_test_with_a_missing_sample(sqlite_url: str, tmp_path: Path) -> None:
    line = one_error_line(cli(sqlite_url, tmp_path, "routes", "test", "/nonexistent"), 2)
    assert line == ("parcours: /nonexistent: cannot read the sample message: "
                    "No such file or directory")
    line = one_error_line(cli(sqlite_url, tmp_path, "routes", "test", str(tmp_path)), 2)
    assert "Is a directory" in line
    empty = tmp_path / "empty.hl7"
    empty.write_text("hello\n")
    line = one_error_line(cli(sqlite_url, tmp_path, "routes", "test", str(empty)), 2)
    assert "no HL7 message (no MSH segment)" in line


def test_routes_commands_with_a_missing_routes_file(sqlite_url: str, tmp_path: Path) -> None:
    sample = tmp_path / "m.hl7"
    sample.write_text(msg("RT-1"))
    for args in (("routes", "test", str(sample), "--routes", "/no/routes.yaml"),
                 ("replay", "1", "--routes", "/no/routes.yaml")):
        line = one_error_line(cli(sqlite_url, tmp_path, *args))
        assert line == "/no/routes.yaml:1:1: cannot read the file: No such file or directory"
    res = cli(sqlite_url, tmp_path, "routes", "check", "/no/routes.yaml")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stdout == "/no/routes.yaml:1:1: cannot read the file: No such file or directory\n"


def test_routes_check_reports_every_problem_in_one_pass(sqlite_url: str,
                                                         tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text("version: 1\nchannels:\n  main: {type: mllp, port: -1}\n"
                   "destinations: {}\nroutes:\n  - {name: r1, transform: [nope], to: [x]}\n")
    res = cli(sqlite_url, tmp_path, "routes", "check", str(bad))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3, res.stdout
    assert lines[0].startswith(f"{bad}:3:") and "-1" in lines[0]
    assert lines[1].startswith(f"{bad}:6:") and "unknown transformer 'nope'" in lines[1]
    assert lines[2].startswith(f"{bad}:6:") and "undefined destination 'x'" in lines[2]
    assert res.stderr == f"3 problem(s) in {bad}\n"


def test_serve_with_an_invalid_routes_file(sqlite_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text("version: 1\nchannels:\n  main: {type: mllp, prot: 1}\n")
    res = cli(sqlite_url, tmp_path, "serve", "--routes", str(bad), "--http-port", "0")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    *problems, last = res.stderr.strip().splitlines()
    assert problems and all(p.startswith(f"{bad}:3:") for p in problems), res.stderr
    assert last == f"parcours: {bad}: {len(problems)} problem(s); the engine did not start"


def test_care_circle_and_users_errors(store_url: str, tmp_path: Path) -> None:
    assert cli(store_url, tmp_path, "users", "add", "dr-bob", "--role", "clinician"
               ).returncode == 0
    line = one_error_line(cli(store_url, tmp_path, "care-circle", "grant", "--patient", "99999",
                              "--user", "dr-bob"))
    assert line.startswith("parcours: no patient 99999")
    line = one_error_line(cli(store_url, tmp_path, "care-circle", "grant", "--patient", "1",
                              "--user", "nobody"))
    assert line == "parcours: no user 'nobody'"
    line = one_error_line(cli(store_url, tmp_path, "users", "add", "dr-bob", "--role",
                              "clinician"))
    assert line == "parcours: user 'dr-bob' already exists"
    for sub in ("token", "disable"):
        assert one_error_line(cli(store_url, tmp_path, "users", sub, "nobody")) == \
            "parcours: no user 'nobody'"
    line = one_error_line(cli(store_url, tmp_path, "conflicts", "resolve", "99", "--dismiss"))
    assert line == "parcours: no conflict 99"


def test_store_ids_that_do_not_exist(store_url: str, tmp_path: Path) -> None:
    assert one_error_line(cli(store_url, tmp_path, "replay", "999")) == \
        "message 999: not found"
    assert one_error_line(cli(store_url, tmp_path, "retry", "999")) == \
        "delivery 999: not found"


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql+psycopg://nobody@127.0.0.1:1/none", "parcours: cannot use the store: "),
    ("nonsense://x", "parcours: the store URL is not one SQLAlchemy can open"),
    ("sqlite:///{tmp}/a-file/x.db", "parcours: "),
])
def test_a_store_that_cannot_be_used(tmp_path: Path, url: str, expected: str) -> None:
    (tmp_path / "a-file").write_text("a file where the store's folder would be")
    url = url.format(tmp=tmp_path)
    for args in (("messages", "list"), ("deliveries",), ("users", "list"),
                 ("mappings", "backlog"), ("audit",)):
        line = one_error_line(cli(url, tmp_path, *args))
        assert line.startswith(expected), (args, line)


def test_usage_errors_are_one_line(sqlite_url: str, tmp_path: Path) -> None:
    line = one_error_line(cli(sqlite_url, tmp_path, "routes", "test"), 2)
    assert line == ("parcours routes test: the following arguments are required: "
                    "message_file (see `parcours routes test --help`)")
    line = one_error_line(cli(sqlite_url, tmp_path, "frobnicate"), 2)
    assert "invalid choice: 'frobnicate'" in line
    line = one_error_line(cli(sqlite_url, tmp_path, "replay", "abc"), 2)
    assert "invalid int value: 'abc'" in line


@pytest.mark.parametrize(("args", "expected"), [
    (("dmp-sim", "--port", "99999"), "parcours: --port 99999: a TCP port is 0 to 65535"),
    (("serve", "--http-port", "70000"), "parcours: --http-port 70000: a TCP port is 0 to 65535"),
    (("send", "--tls-ca", "/no/ca.pem", "x.hl7"), "parcours: --tls-ca /no/ca.pem: no such file"),
    (("dmp-sim", "--tls-cert", "/no/c.pem", "--tls-key", "/no/k.pem"),
     "parcours: --tls-cert /no/c.pem: no such file"),
])
def test_options_refused_before_anything_starts(sqlite_url: str, tmp_path: Path,
                                                args: tuple[str, ...], expected: str) -> None:
    line = one_error_line(cli(sqlite_url, tmp_path, *args), 2)
    assert line == expected


def test_mappings_errors(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "mappings").mkdir()
    line = one_error_line(cli(sqlite_url, tmp_path, "mappings", "accept", "LAB", "X1",
                              "99999-9"))
    assert line.startswith("parcours: refused: ") and "wrong check digit" in line
    assert list((tmp_path / "mappings").iterdir()) == []  # nothing written
    line = one_error_line(cli(sqlite_url, tmp_path, "mappings", "suggest", "NOPE"))
    assert "not in the backlog" in line


def test_mappings_suggest_searches_the_text_without_a_code(sqlite_url: str,
                                                           tmp_path: Path) -> None:
    """Issue #16: `--text` alone used to list the (empty) backlog and print nothing."""
    res = cli(sqlite_url, tmp_path, "mappings", "suggest", "--text", "glucose", "--unit",
              "mmol/L")
    assert res.returncode == 0, res.stderr
    assert "“glucose”" in res.stdout and "1. 14749-6" in res.stdout
    assert "accept: parcours mappings accept SENDER CODE 14749-6" in res.stdout


def test_send_errors(sqlite_url: str, tmp_path: Path) -> None:
    line = one_error_line(cli(sqlite_url, tmp_path, "send", "--port", "1",
                              str(tmp_path / "missing.hl7")), 2)
    assert line == f"parcours: {tmp_path / 'missing.hl7'}: cannot read: No such file or directory"
    junk = tmp_path / "junk.hl7"
    junk.write_text("not hl7\n")
    assert "no HL7 message" in one_error_line(
        cli(sqlite_url, tmp_path, "send", "--port", "1", str(junk)), 2)


async def test_send_does_not_wait_for_an_ack_to_an_ack(sqlite_url: str,
                                                       tmp_path: Path) -> None:
    """An ACK is not acknowledged (HL7 v2.5.1 §2.9): `send` says so at once and waits for
    nothing, even with a peer that never answers and a 600 s ACK timeout. Had it waited, the
    subprocess would have overrun its own 60 s limit."""
    received = bytearray()
    got = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)
            if b"\x1c\r" in received:
                got.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ack = tmp_path / "ack.hl7"
    ack.write_text(ACK)
    try:
        res = await asyncio.to_thread(cli, sqlite_url, tmp_path, "send", "--port", str(port),
                                      "--timeout", "600", str(ack))
        await asyncio.wait_for(got.wait(), 10)
    finally:
        server.close()
        await server.wait_closed()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "are ACKs: sent without waiting for a reply" in res.stderr
    assert "sent 1 message(s): not acknowledged (an ACK) 1" in res.stdout
    assert bytes(received).startswith(b"\x0bMSH|") and b"MSA|AA|MSG-1" in received


def test_deliveries_shows_the_whole_error(store_url: str, tmp_path: Path) -> None:
    from engine.store.database import Store
    from engine.store.models import deliveries, messages

    store = Store(store_url)
    store.migrate()
    now = datetime.now(UTC)
    error = ("DMP refused the submission: " + "XDSRegistryMetadataError " * 8
             + "— the end of the message says why: the patient's INS is unknown")
    with store.engine.begin() as conn:
        mid = conn.execute(insert(messages).values(
            channel="main", received_at=now, size=1, raw=b"x", status="failed",
        ).returning(messages.c.id)).scalar_one()
        conn.execute(insert(deliveries).values(
            message_id=mid, route="to-dmp", destination="dmp", partition=0, status="dead",
            attempts=3, next_attempt_at=now, created_at=now, updated_at=now,
            content_type="application/xml", payload=b"", last_error=error,
            error_code="XDSUnknownPatientId"))
    store.close()
    res = cli(store_url, tmp_path, "deliveries", "--status", "dead")
    assert res.returncode == 0, res.stderr
    assert len(error) > 90
    assert f"[XDSUnknownPatientId] {' '.join(error.split())}" in res.stdout
    assert "dmp / to-dmp" in res.stdout


def test_an_unexpected_failure_is_one_line_too(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.cli.errors import INTERNAL, guarded

    def broken() -> int:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.delenv("PARCOURS_DEBUG", raising=False)
    assert guarded(broken) == INTERNAL
    err = capsys.readouterr().err
    assert err == ("parcours: internal error: RuntimeError: boom second line (run again with "
                   "PARCOURS_DEBUG=1 for the traceback)\n")
    monkeypatch.setenv("PARCOURS_DEBUG", "1")
    with pytest.raises(RuntimeError):
        guarded(broken)


def test_help_still_works(sqlite_url: str, tmp_path: Any) -> None:
    res = cli(sqlite_url, tmp_path, "routes", "test", "--help")
    assert res.returncode == 0 and "MESSAGE_FILE" in res.stdout.upper()
