"""`parcours import` (issue #16): resumable after a SIGKILL with no file twice, intake's rules
(resends, refusals), history routed only by `history: true` routes, and its errors."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from sqlalchemy import func, select

from engine.config import load_file
from engine.routing.router import Router
from engine.routing.transformers import Registry
from engine.store.database import Store
from engine.store.models import deliveries, inbound_files, messages
from tests.intake.test_ack_rules import msg
from tests.test_cli import PARCOURS, run


def _folder(root: Path, files: int, prefix: str = "H") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = root / f"{i // 100:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"{prefix}{i:05d}.hl7").write_text(msg(f"{prefix}-{i}"))
    return root


def _count(store: Store, table: object) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_import_resumes_after_sigkill_without_a_file_twice(store_url: str,
                                                           tmp_path: Path) -> None:
    total = 600
    folder = _folder(tmp_path / "history", total)
    batch = folder / "batch.hl7"
    batch.write_text("FHS|^~\\&|LAB\rBHS|^~\\&|LAB\r" + msg("B-1") + msg("B-2") + msg("B-3")
                     + "BTS|3\rFTS|1\r")
    args = [*PARCOURS, "import", str(folder), "--store-url", store_url, "--quiet",
            "--routes", str(tmp_path / "none.yaml")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = Store(store_url)
    deadline = time.monotonic() + 60
    recorded = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            recorded = _count(store, inbound_files)
        except Exception:  # the tables do not exist until the import migrated the store
            recorded = 0
        if recorded >= 40:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the import ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = _count(store, inbound_files)
    assert 40 <= at_kill < total + 1
    res = run(*args[3:])
    assert res.returncode == 0, res.stderr
    assert f"{at_kill} file(s) already imported were skipped" in res.stdout
    assert f"imported {total + 1 - at_kill} file(s)" in res.stdout
    # Every file once, every message once, nothing taken for a resend.
    assert _count(store, inbound_files) == total + 1
    with store.engine.connect() as conn:
        rows = conn.execute(select(messages.c.control_id, messages.c.status,
                                   messages.c.origin)).all()
        names = conn.execute(select(inbound_files.c.name, func.count())
                             .group_by(inbound_files.c.name)
                             .having(func.count() > 1)).all()
    store.close()
    assert names == []
    assert len(rows) == total + 3
    assert sorted(r.control_id for r in rows) == sorted(
        [f"H-{i}" for i in range(total)] + ["B-1", "B-2", "B-3"])
    assert {r.status for r in rows} == {"accepted"}
    assert {r.origin for r in rows} == {"history"}
    # A third run finds nothing to do.
    res = run(*args[3:])
    assert "imported 0 file(s)" in res.stdout and f"{total + 1} file(s) already" in res.stdout


ROUTES = """version: 1
channels:
  main: {{type: mllp, port: 0}}
destinations:
  timeline_files: {{type: file, path: "{out}/timeline"}}
  forward: {{type: file, path: "{out}/forward"}}
routes:
  - name: to-timeline
    history: true
    to: [timeline_files]
  - name: forward-live
    to: [forward]
"""


def _destinations(store: Store, routes: Path) -> dict[str, set[str]]:
    config = load_file(routes)
    registry = Registry(config.transformer_paths, base=routes.parent)
    router = Router(store, config, registry.resolve, 8)
    while router.route_batch()[0]:
        pass
    with store.engine.connect() as conn:
        rows = conn.execute(select(messages.c.control_id, deliveries.c.destination)
                            .join(deliveries, deliveries.c.message_id == messages.c.id)).all()
    out: dict[str, set[str]] = {}
    for control_id, dest in rows:
        out.setdefault(control_id, set()).add(dest)
    return out


def test_history_takes_only_history_routes_live_takes_all(store_url: str,
                                                          tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.format(out=tmp_path / "out"))
    old = _folder(tmp_path / "old", 3, prefix="OLD")
    new = _folder(tmp_path / "new", 2, prefix="NEW")
    common = ["--store-url", store_url, "--routes", str(routes), "--quiet"]
    res = run("import", str(old), *common)
    assert res.returncode == 0, res.stderr
    assert "3 message(s) on channel 'import' as history" in res.stdout
    res = run("import", str(new), "--routes-as", "live", "--channel", "main", *common)
    assert res.returncode == 0, res.stderr
    store = Store(store_url)
    got = _destinations(store, routes)
    store.close()
    assert got == {**{f"OLD-{i}": {"timeline_files"} for i in range(3)},
                   **{f"NEW-{i}": {"timeline_files", "forward"} for i in range(2)}}


def test_import_applies_intake_rules(store_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.hl7").write_text(msg("R-1") + msg("R-2"))
    (folder / "b.hl7").write_text(msg("R-2"))  # the same message again: a resend
    (folder / "c.hl7").write_text(msg("R-3", processing="X"))  # refused: MSH-11
    (folder / "notes.txt").write_text("not HL7 at all\n")
    (folder / "skip.pdf").write_bytes(b"%PDF")  # not a pattern of a folder search
    res = run("import", str(folder), "--store-url", store_url,
              "--routes", str(tmp_path / "none.yaml"))
    assert res.returncode == 1  # some files had problems: listed, one line each
    # The progress bar (stderr): bytes done of the total, rate, files and messages so far.
    assert "import: 100%" in res.stderr and "B/s" in res.stderr
    assert "files=4, messages=5" in res.stderr
    assert "imported 4 file(s), 5 message(s)" in res.stdout
    assert "1 identical resend(s)" in res.stdout
    assert f"{folder / 'c.hl7'}: message 1 (MSH-10 R-3): AR" in res.stdout
    assert f"{folder / 'notes.txt'}: no MSH segment found" in res.stdout
    store = Store(store_url)
    with store.engine.connect() as conn:
        statuses = dict(conn.execute(select(messages.c.control_id, messages.c.status)
                                     .where(messages.c.control_id.is_not(None))).all())
    store.close()
    assert statuses["R-1"] == "accepted" and statuses["R-3"] == "rejected"


def test_import_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    res = run("import", str(tmp_path / "nowhere"), "--store-url", url)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == f"parcours import: {tmp_path / 'nowhere'}: no such file or folder"
    (tmp_path / "empty").mkdir()
    res = run("import", str(tmp_path / "empty"), "--store-url", url)
    assert res.returncode == 2 and "no file to import" in res.stderr
    bad = tmp_path / "routes.yaml"
    bad.write_text("version: 1\nchannels: {main: {type: mllp, port: 0}}\nroutes:\n"
                   "  - {name: r, to: [x], history: maybe}\n")
    (tmp_path / "empty" / "m.hl7").write_text(msg("E-1"))
    res = run("import", str(tmp_path / "empty"), "--store-url", url, "--routes", str(bad))
    assert res.returncode == 2 and "routes.yaml:4:" in res.stderr


def test_imported_messages_keep_their_original_time(store_url: str, tmp_path: Path) -> None:
    """received_at is MSH-7 (with its offset; without one, Paris time), else the file's
    mtime; imported_at is the import's own time; the search by date finds them there."""
    from datetime import UTC, datetime

    from engine.intake.history_import import HistoryImport, policy_for_import
    from engine.ui.messages import Search, search

    folder = tmp_path / "history"
    folder.mkdir()
    stamped = {"offset": "20190315101500+0100", "local": "201903151015",
               "none": "", "garbage": "15/03/2019"}
    for name, ts in stamped.items():
        text = msg(f"T-{name}").replace("|20261125120000|", f"|{ts}|", 1)
        assert f"|{ts}|" in text
        (folder / f"{name}.hl7").write_text(text)
    mtime = datetime(2018, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    for name in ("none", "garbage"):
        os.utime(folder / f"{name}.hl7", (mtime, mtime))
    started = datetime.now(UTC)
    store = Store(store_url)
    store.migrate()
    try:
        HistoryImport(store, policy_for_import(None, "import")).run(
            sorted(folder.iterdir()))
        with store.engine.connect() as conn:
            rows = {r.control_id: r for r in conn.execute(
                select(messages.c.control_id, messages.c.received_at,
                       messages.c.imported_at))}

        def utc(v: datetime) -> datetime:
            return v if v.tzinfo else v.replace(tzinfo=UTC)

        assert utc(rows["T-offset"].received_at) == datetime(2019, 3, 15, 9, 15, tzinfo=UTC)
        assert utc(rows["T-local"].received_at) == datetime(2019, 3, 15, 9, 15, tzinfo=UTC)
        for name in ("T-none", "T-garbage"):
            assert utc(rows[name].received_at) == datetime(2018, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert all(utc(r.imported_at) >= started.replace(microsecond=0)
                   for r in rows.values())
        found = search(store, Search(since=datetime(2019, 3, 15, tzinfo=UTC),
                                     until=datetime(2019, 3, 16, tzinfo=UTC)))
        assert sorted(r["control_id"] for r in found) == ["T-local", "T-offset"]
        # A live arrival keeps the moment it was received, and no import time.
        from engine.store.database import Arrival

        store.save_arrivals([Arrival(channel="live", raw=msg("L-1").encode(),
                                     status="accepted", control_id="L-1")])
        with store.engine.connect() as conn:
            live = conn.execute(select(messages.c.received_at, messages.c.imported_at)
                                .where(messages.c.control_id == "L-1")).one()
        assert live.imported_at is None and utc(live.received_at) >= started
    finally:
        store.close()
