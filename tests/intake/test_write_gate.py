"""SQLite's write gate (engine/store/write_gate.py): writers of one process take turns on a
condition instead of SQLite's sleeping busy handler, and no way of leaving a transaction
keeps the gate."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from engine.store.database import make_engine
from engine.store.write_gate import gate_of


@pytest.fixture
def sqlite_engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    eng = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)"))
    yield eng
    eng.dispose()


def test_only_sqlite_has_a_gate(sqlite_engine, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    assert gate_of(sqlite_engine) is not None
    pg = make_engine(pg_url)
    try:
        assert gate_of(pg) is None
    finally:
        pg.dispose()


def test_writers_take_turns(sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    """8 threads × 50 transactions that each hold the write lock a while: every row lands,
    nobody hits SQLITE_BUSY, and the waits went through the gate."""
    gate = gate_of(sqlite_engine)
    assert gate is not None
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(50):
                with sqlite_engine.begin() as conn:
                    conn.execute(text("INSERT INTO t (who) VALUES (:w)"), {"w": f"{n}-{i}"})
                    time.sleep(0.0005)  # hold the lock: the others must wait
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with sqlite_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 400
    assert gate.waits > 0 and gate.timeouts == 0
    assert gate._owner is None and gate._holders == {}  # noqa: SLF001


@pytest.mark.parametrize("leave", ["rollback", "close_without_commit", "invalidate", "error"])
def test_every_way_out_releases_the_gate(sqlite_engine, leave: str) -> None:  # type: ignore[no-untyped-def]
    gate = gate_of(sqlite_engine)
    assert gate is not None
    conn = sqlite_engine.connect()
    conn.execute(text("INSERT INTO t (who) VALUES ('a')"))
    assert gate._owner is not None  # noqa: SLF001
    if leave == "rollback":
        conn.rollback()
        conn.close()
    elif leave == "close_without_commit":
        conn.close()  # the pool's reset-on-return rolls back
    elif leave == "invalidate":
        conn.invalidate()
        conn.close()
    else:
        with pytest.raises(IntegrityError):
            conn.execute(text("INSERT INTO t (id, who) VALUES (1, 'x'), (1, 'y')"))
        conn.rollback()
        conn.close()
    assert gate._owner is None and gate._holders == {}  # noqa: SLF001
    # Another thread writes at once, without waiting for the timeout.
    done = threading.Event()

    def other() -> None:
        with sqlite_engine.begin() as c:
            c.execute(text("INSERT INTO t (who) VALUES ('b')"))
        done.set()

    threading.Thread(target=other).start()
    assert done.wait(5)
    assert gate.timeouts == 0


def test_a_stuck_holder_slows_writers_but_never_stops_them(
        sqlite_engine, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    gate = gate_of(sqlite_engine)
    assert gate is not None
    gate.timeout = 0.2
    stuck = object()  # a holder that never commits (a bug)
    holder = threading.Thread(target=gate.hold, args=(stuck,))
    holder.start()
    holder.join()
    with caplog.at_level(logging.WARNING, logger="parcours.store"):
        started = time.monotonic()
        with sqlite_engine.begin() as conn:
            conn.execute(text("INSERT INTO t (who) VALUES ('c')"))
        waited = time.monotonic() - started
    assert gate.timeouts == 1 and waited >= 0.2
    assert "writing without it" in caplog.text
    gate.release(stuck)
    assert gate._owner is None  # noqa: SLF001


def _until(check, limit: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_holder_sees_a_writer_of_this_process_waiting() -> None:
    from engine.store.write_gate import WriteGate

    gate = WriteGate()
    a, b = object(), object()
    gate.hold(a)
    assert not gate.others_waiting()
    taken = threading.Event()

    def other() -> None:
        gate.hold(b)
        taken.set()
        gate.release(b)

    t = threading.Thread(target=other)
    t.start()
    assert _until(gate.others_waiting)
    assert not taken.is_set()
    gate.release(a)
    t.join(10)
    assert taken.is_set() and not gate.others_waiting()


def test_a_holder_sees_a_writer_of_the_other_process_waiting(tmp_path: Path) -> None:
    """Two gates on one lock file are the intake process and its worker (each open file
    description is its own flock owner, as in two processes)."""
    from engine.store.write_gate import WriteGate

    lock = str(tmp_path / "db.gate")
    intake, worker = WriteGate(lock_file=lock), WriteGate(lock_file=lock)
    try:
        w, i = object(), object()
        worker.hold(w)
        assert not worker.others_waiting()
        taken = threading.Event()

        def commit() -> None:
            intake.hold(i)
            taken.set()

        t = threading.Thread(target=commit)
        t.start()
        assert _until(worker.others_waiting)
        assert not taken.is_set()
        worker.release(w)
        t.join(10)
        assert taken.is_set()
        assert not intake.others_waiting() and not worker.others_waiting()
        intake.release(i)
    finally:
        intake.close()
        worker.close()
