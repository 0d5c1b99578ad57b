"""The group-commit write path of the store (`Store.save_arrivals`), on SQLite and PostgreSQL.

A batch goes in as one multi-row INSERT; these tests pin what that must not change: ids in
arrival order, resends inside a batch and across batches, keyless rows in their place, and a
dedup key that another engine process stores while the batch is being written.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from engine.store.database import Arrival, Store, dedup_key
from engine.store.models import MessageStatus


def _arrival(control_id: str | None, raw: bytes | None = None) -> Arrival:
    raw = raw or f"MSH|^~\\&|LAB|SITE|P|F|20261125||ORU^R01|{control_id}|P|2.5.1\r".encode()
    return Arrival(
        channel="main", raw=raw, status=MessageStatus.ACCEPTED, sending_application="LAB",
        sending_facility="SITE", control_id=control_id, ack_code="AA",
        ack=f"ACK {control_id}".encode(),
        dedup=dedup_key("main", "LAB", "SITE", control_id) if control_id else None,
    )


REUSED_A2 = b"MSH|^~\\&|LAB|SITE|P|F|20261125||ORU^R01|A2|P|2.5.1\rPID|x\r"


def _store(url: str) -> Store:
    store = Store(url)
    store.migrate()
    return store


def test_batch_keeps_arrival_order_and_settles_resends(store_url: str) -> None:
    store = _store(store_url)
    try:
        first = store.save_arrivals([_arrival("A1"), _arrival("A2")])
        batch = [
            _arrival("B1"),
            _arrival("A1"),  # resend of a stored message
            _arrival(None),  # no MSH-10: kept, never deduplicated
            _arrival("B2"),
            _arrival("B1"),  # resend of a message earlier in this very batch
            _arrival("A2", raw=REUSED_A2),  # A2 again with new content: a new message
            _arrival("A2", raw=REUSED_A2.replace(b"20261125", b"20261126")),  # its resend
        ]
        saved = store.save_arrivals(batch)
        assert len(saved) == len(batch)
        fresh = [saved[0].id, saved[2].id, saved[3].id]
        assert fresh == sorted(fresh) and fresh[0] > first[1].id  # arrival order
        assert saved[1].duplicate_of == first[0].id and saved[1].original_ack == b"ACK A1"
        assert saved[4].duplicate_of == saved[0].id and saved[4].original_ack == b"ACK B1"
        assert saved[5].duplicate_of is None and saved[5].reuse_of == first[1].id
        assert saved[6].duplicate_of == saved[5].id  # MSH-7 aside, the same as the reuse
        rows = {r["id"]: r for r in store.list_messages(limit=100)}
        assert rows[saved[1].id]["status"] == MessageStatus.DUPLICATE
        assert rows[saved[1].id]["error"] is None  # same bytes: a plain resend
        assert rows[saved[5].id]["status"] == MessageStatus.ACCEPTED  # processed, flagged:
        assert rows[saved[5].id]["reuse_of"] == first[1].id
        assert rows[saved[6].id]["status"] == MessageStatus.DUPLICATE
        assert rows[saved[2].id]["status"] == MessageStatus.ACCEPTED
        assert store.count_messages() == 2 + len(batch)
    finally:
        store.close()


def test_key_stored_by_another_process_during_the_batch(store_url: str) -> None:
    """Process A holds an uncommitted row with key K; process B's batch carrying K and L
    reads before A commits and inserts after: K must become a resend of A's row, L stays."""
    a, b = _store(store_url), _store(store_url)
    try:
        conn = a.engine.connect()
        tx = conn.begin()
        (mine,) = a._save(conn, [_arrival("K")], per_row=False)
        outcome: dict[str, object] = {}

        def other_process() -> None:
            try:
                outcome["saved"] = b.save_arrivals([_arrival("K"), _arrival("L")])
            except Exception as exc:  # reported below, not swallowed
                outcome["error"] = exc

        worker = threading.Thread(target=other_process)
        worker.start()
        time.sleep(0.5)  # B has read (K unknown) and waits on A's write
        tx.commit()
        conn.close()
        worker.join(30)
        assert "error" not in outcome, outcome.get("error")
        k, lo = outcome["saved"]  # type: ignore[misc]
        assert k.duplicate_of == mine.id and k.original_ack == b"ACK K"
        assert lo.duplicate_of is None and lo.id > mine.id
        assert b.count_messages(status=MessageStatus.DUPLICATE) == 1
    finally:
        a.close()
        b.close()


def test_reuse_stored_by_another_process_during_the_batch(store_url: str) -> None:
    """Both processes meet the same new content under a stored control id: one stores it as
    the reuse, the other's arrival becomes its resend, never a second processed message."""
    a, b = _store(store_url), _store(store_url)
    try:
        (orig,) = a.save_arrivals([_arrival("R")])
        reused = b"MSH|^~\\&|LAB|SITE|P|F|20261125||ORU^R01|R|P|2.5.1\rPID|other\r"
        conn = a.engine.connect()
        tx = conn.begin()
        (mine,) = a._save(conn, [_arrival("R", raw=reused)], per_row=False)
        assert mine.reuse_of == orig.id
        outcome: dict[str, object] = {}

        def other_process() -> None:
            try:
                outcome["saved"] = b.save_arrivals([_arrival("R", raw=reused)])
            except Exception as exc:  # reported below, not swallowed
                outcome["error"] = exc

        worker = threading.Thread(target=other_process)
        worker.start()
        time.sleep(0.5)
        tx.commit()
        conn.close()
        worker.join(30)
        assert "error" not in outcome, outcome.get("error")
        (theirs,) = outcome["saved"]  # type: ignore[misc]
        assert theirs.duplicate_of == mine.id and theirs.reuse_of is None
        assert b.count_messages(status=MessageStatus.ACCEPTED) == 2
    finally:
        a.close()
        b.close()


def _kill_intake_connection(store: Store) -> None:
    """Take the group commit's own connection away, as a server restart or a network cut
    would: on PostgreSQL its backend is terminated, on SQLite the handle is closed."""
    raw = store._intake_conn.dbapi_connection
    if store.dialect == "sqlite":
        raw.close()
        return
    pid = raw.info.backend_pid
    admin = Store(store.url)
    try:
        with admin.engine.begin() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
    finally:
        admin.close()


def test_lost_intake_connection_costs_no_arrival(store_url: str) -> None:
    store = _store(store_url)
    try:
        (first,) = store.save_arrivals([_arrival("C1")])
        held = store._intake_conn
        assert held is not None  # the fast path kept its connection
        _kill_intake_connection(store)
        second = store.save_arrivals([_arrival("C2"), _arrival("C1")])  # redone, slow path
        assert second[0].duplicate_of is None and second[0].id > first.id
        assert second[1].duplicate_of == first.id
        (third,) = store.save_arrivals([_arrival("C3")])
        assert store._intake_conn is not None and store._intake_conn is not held
        assert third.id > second[1].id
        assert store.count_messages() == 4
    finally:
        store.close()


def test_content_digest_sets_aside_msh7_and_terminators_only() -> None:
    from engine.store.database import content_digest

    base = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X|P|2.5\rEVN|A01|20260101\rPID|1\r"
    same = [base.replace(b"|20260101||", b"|20270102||"), base.replace(b"\r", b"\n"),
            base.replace(b"\r", b"\r\n"), base.rstrip(b"\r"), base + b"\r"]
    assert {content_digest(v) for v in same} == {content_digest(base)}
    # Anything else is content: EVN-2, PID, the encoding characters, a short MSH.
    other = [base.replace(b"EVN|A01|20260101", b"EVN|A01|20260102"),
             base.replace(b"PID|1", b"PID|2"), base.replace(b"^~\\&", b"^~\\#"),
             b"MSH|^~\\&|A\nPID|1|20260101\n", b"MSH|^~\\&|A\nPID|1|20270101\n", b"MSH"]
    digests = [content_digest(v) for v in other]
    assert len(set(digests)) == len(digests) and content_digest(base) not in digests
    # CDA: bytes, line ends as an XML parser reads them.
    doc = b"<ClinicalDocument>\r\n<title>A</title>\r\n</ClinicalDocument>\n"
    assert content_digest(doc, document=True) == content_digest(
        doc.replace(b"\r\n", b"\n"), document=True)
    assert content_digest(doc, document=True) != content_digest(
        doc.replace(b"A", b"B"), document=True)
def _refuse_control_id(store: Store, control_id: str) -> None:
    """A trigger that makes the database itself refuse one row (as a constraint, a value
    out of range or a full tablespace would), on the driver's raw cursor path."""
    with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse_one BEFORE INSERT ON messages "
                f"WHEN NEW.control_id = '{control_id}' "
                f"BEGIN SELECT RAISE(ABORT, 'row refused'); END")
        else:
            conn.exec_driver_sql(
                f"CREATE FUNCTION refuse_one() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.control_id = '{control_id}' THEN RAISE EXCEPTION 'row refused'; "
                f"END IF; RETURN NEW; END $$ LANGUAGE plpgsql")
            conn.exec_driver_sql("CREATE TRIGGER refuse_one BEFORE INSERT ON messages "
                                 "FOR EACH ROW EXECUTE FUNCTION refuse_one()")


def test_one_refused_row_fails_alone(store_url: str) -> None:
    """The slow path sees the driver's own exceptions (the raw cursor bypasses SQLAlchemy's
    wrapping): the refused arrival alone gets the error, its neighbours are committed."""
    store = _store(store_url)
    try:
        _refuse_control_id(store, "BAD")
        saved = store.save_arrivals([_arrival("OK1"), _arrival("BAD"), _arrival("OK2")])
        assert len(saved) == 3
        ok1, bad, ok2 = saved
        assert isinstance(bad, Exception)
        assert not isinstance(ok1, Exception) and not isinstance(ok2, Exception)
        assert ok1.id < ok2.id
        assert [r["control_id"] for r in store.list_messages(limit=10)] in (
            ["OK1", "OK2"], ["OK2", "OK1"])
    finally:
        store.close()


async def test_refused_row_over_mllp_costs_its_neighbours_nothing(
        make_engine: Any, store_url: str) -> None:
    """Pipelined on one connection (so the frames share group commits): the refused
    message is answered AR 207, every other one AA and stored."""
    from connectors.mllp.client import MLLPClient
    from tests.intake.test_ack_rules import msg
    from transformers.hl7.ack import read_ack

    eng = await make_engine(store_url=store_url)
    _refuse_control_id(eng.store, "BAD")
    ids = [f"P-{i}" for i in range(10)] + ["BAD"] + [f"Q-{i}" for i in range(10)]
    async with MLLPClient("127.0.0.1", eng.port()) as c:
        acks = await c.send_many([msg(i).encode() for i in ids], window=len(ids))
    codes = {read_ack(a)[1]: read_ack(a)[0] for a in acks}
    assert codes.pop("BAD") == "AR"
    assert set(codes.values()) == {"AA"} and len(codes) == 20
    assert sorted(r["control_id"] for r in eng.store.list_messages(limit=50)) == \
        sorted(i for i in ids if i != "BAD")
