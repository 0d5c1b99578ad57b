"""A retention pass never holds the write lock for long (issue #16): its transactions are cut
by a time budget and a row limit, and on SQLite the engine's other writers get the write gate
between them.

The budget is exercised with a clock the test advances itself, so what is asserted is rows
per transaction and the order of the gate's holders, never a duration."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

import pytest

from engine.store.database import Arrival, Store
from engine.store.models import MessageStatus
from engine.store.prune import CHUNK, Pruner
from engine.store.retention import from_config
from engine.store.write_gate import gate_of
from tests.retention.history import DeliverySpec, MessageSpec, clear, write

NOW = datetime.now(UTC)
POLICY = from_config({"keep": {"payload_days": 1}})
N = 120


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    s.migrate()
    with s.engine.begin() as conn:
        clear(conn)
        write(conn, [MessageSpec(status="done", age=30, size=2000, deliveries=[
            DeliverySpec("delivered", delivered_age=29, attempts=[29])]) for _ in range(N)],
            NOW)
    yield s
    s.close()


def ticking(step: float = 1.0) -> Callable[[], float]:
    """A clock that moves `step` each time it is read: one read per chunk of work."""
    ticks = count()
    return lambda: next(ticks) * step


def test_budget_cuts_each_transaction_after_the_chunks_it_allows(store: Store) -> None:
    # The clock is read when a transaction starts and after each chunk: a budget of 2.5
    # ticks lets three chunks in, then the transaction commits.
    pruner = Pruner(store, POLICY, budget_s=2.5, clock=ticking(), rest=False)
    report = pruner.run(now=NOW, vacuum=False)
    assert report.payloads == N
    assert report.most_rows_in_batch == 3 * CHUNK
    assert report.batches == -(-N // (3 * CHUNK))


def test_a_spent_budget_still_commits_one_chunk_at_a_time(store: Store) -> None:
    report = Pruner(store, POLICY, budget_s=0.0, clock=ticking(), rest=False).run(
        now=NOW, vacuum=False)
    assert report.payloads == N
    assert report.most_rows_in_batch == CHUNK
    assert report.batches == N // CHUNK


def test_row_limit_holds_when_the_clock_never_moves(store: Store) -> None:
    report = Pruner(store, POLICY, budget_s=1.0, max_rows=40, clock=lambda: 0.0,
                    rest=False).run(now=NOW, vacuum=False)
    assert report.payloads == N
    assert report.most_rows_in_batch == 40
    assert report.batches == N // 40


def test_intake_gets_the_gate_between_prune_transactions(tmp_path: Path) -> None:
    """An arrival committing in a loop beside the pass (as the group commit does): every
    time a prune transaction ended with a writer queued, that writer held the gate next;
    and intake committed between the pass's first and last transaction."""
    s = Store(f"sqlite:///{tmp_path / 'yields.db'}")
    s.migrate()
    with s.engine.begin() as conn:
        write(conn, [MessageSpec(status="done", age=30, size=2000, deliveries=[
            DeliverySpec("delivered", delivered_age=29)]) for _ in range(N)], NOW)
    gate = gate_of(s.engine)
    assert gate is not None
    holds = gate.record()
    stop = threading.Event()
    committed = 0

    def intake() -> None:
        nonlocal committed
        while not stop.is_set():
            s.save_arrivals([Arrival(channel="live", raw=b"MSH|^~\\&|A|B|C|D|x||ADT^A01|"
                                     + str(committed).encode() + b"|P|2.5.1\r",
                                     status=MessageStatus.ACCEPTED)])
            committed += 1

    t = threading.Thread(target=intake, name="intake")
    t.start()
    try:
        report = Pruner(s, POLICY, budget_s=0.0, clock=ticking()).run(now=NOW)
    finally:
        stop.set()
        t.join()
        s.close()
    assert report.payloads == N and report.most_rows_in_batch == CHUNK
    log = list(holds)
    pruner = [i for i, h in enumerate(log) if h.thread == "MainThread"]
    # One hold per transaction, plus the space given back (vacuum steps, WAL truncation).
    assert len(pruner) >= report.batches == N // CHUNK
    between = [h for h in log[pruner[0]:pruner[-1]] if h.thread == "intake"]
    assert between, "intake never committed during the pass"
    for i in pruner:
        if log[i].queued and i + 1 < len(log):
            assert log[i + 1].thread != "MainThread", (i, log[i], log[i + 1])


def test_prune_commits_without_fsync_and_gives_the_connection_back_as_it_was(
        tmp_path: Path) -> None:
    """The pruner's transactions commit with synchronous=NORMAL (redone by the next pass if a
    power cut loses one); the pooled connections intake and the router use stay FULL."""
    s = Store(f"sqlite:///{tmp_path / 'sync.db'}")
    s.migrate()
    with s.engine.begin() as conn:
        write(conn, [MessageSpec(status="done", age=30, size=2000) for _ in range(N)], NOW)
    seen: list[int] = []
    from sqlalchemy import event

    @event.listens_for(s.engine, "commit")
    def _mode(conn: object) -> None:
        seen.append(conn.connection.dbapi_connection.execute(  # type: ignore[attr-defined]
            "PRAGMA synchronous").fetchone()[0])

    try:
        report = Pruner(s, POLICY, rest=False).run(now=NOW)
        assert report.payloads == N
        assert seen and set(seen) == {1}  # NORMAL at every prune COMMIT
        conns = [s.engine.raw_connection() for _ in range(4)]
        modes = {c.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0]
                 for c in conns}
        autos = {c.dbapi_connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
                 for c in conns}
        for c in conns:
            c.close()
        assert modes == {2}  # FULL again on every pooled connection
        assert autos == {1000}  # and SQLite's auto-checkpoint as it was
    finally:
        s.close()


def test_a_writer_waiting_ends_the_transaction_after_one_chunk(tmp_path: Path) -> None:
    """Budget never spent (the clock stands still), row limit 50 — but a writer of another
    process is waiting (it holds the gate's `.wants` file shared, as `WriteGate.hold` does
    while blocked): every transaction commits after its first chunk."""
    import fcntl
    import os

    db = tmp_path / "wants.db"
    s = Store(f"sqlite:///{db}")
    s.migrate()
    with s.engine.begin() as conn:
        write(conn, [MessageSpec(status="done", age=30, size=2000) for _ in range(N)], NOW)
    fd = os.open(f"{db}.gate.wants", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        report = Pruner(s, POLICY, budget_s=1.0, max_rows=50, clock=lambda: 0.0,
                        rest=False).run(now=NOW, vacuum=False)
        assert report.most_rows_in_batch == 50  # nobody waiting: the row limit cuts
        with s.engine.begin() as conn:
            clear(conn)
            write(conn, [MessageSpec(status="done", age=30, size=2000) for _ in range(N)],
                  NOW)
        fcntl.flock(fd, fcntl.LOCK_SH)  # another process's writer is blocked on the gate
        report = Pruner(s, POLICY, budget_s=1.0, max_rows=50, clock=lambda: 0.0,
                        rest=False).run(now=NOW, vacuum=False)
        assert report.payloads == N
        assert report.most_rows_in_batch == CHUNK
        assert report.batches == N // CHUNK
    finally:
        os.close(fd)
        s.close()
