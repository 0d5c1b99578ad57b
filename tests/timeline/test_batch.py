"""The set-based batch apply (engine/timeline/batch.py, issue #12) leaves the store exactly as
applying the same envelopes one at a time through `Applier.apply` does: same rows, same ids,
same values, same outcomes — across chunk boundaries, with envelopes it hands to the
envelope-at-a-time path in the middle of a chunk, on both stores."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from engine.timeline import batch, service
from engine.timeline.models import (
    applied_events,
    care_circle,
    identity_history,
    movements,
    observations,
    patient_identifiers,
    patients,
    stays,
    timeline_conflicts,
    timeline_events,
)

from .conftest import FHIR, TL, edit, events_of, read

LAB_A, LAB_B = "1.2.250.1.71.4.2.1", "1.2.250.1.71.4.2.9"
INS = "1.2.250.1.213.1.4.8"
TABLES = (patients, patient_identifiers, identity_history, timeline_events, observations,
          applied_events, timeline_conflicts, stays, movements, care_circle)
# Set from the clock when written: they differ between any two runs.
CLOCK = {"created_at", "updated_at", "applied_at", "first_at", "last_at"}

PANEL = [("2345-7", "Glucose", "5.4", "mmol/L", "3.9-6.1"),
         ("2160-0", "Creatinine", "88", "umol/L", "62-106"),
         ("718-7", "Hemoglobin", "13.2", "g/dL", "13.0-17.0")]


def oru(control: str, local: str, *, ins: str | None = None, lab: str = LAB_A,
        order: str = "O1", values: dict[int, tuple[str, str]] | None = None,
        cancel: bool = False, family: str = "MARTIN", status: str = "") -> bytes:
    """An ORU^R01 (HL7 v2.5.1 §7.3.1): PID-3 local id (+ INS), one OBR, three OBX;
    `values` replaces OBX n's value and result status (OBX-11, table 0085)."""
    pid3 = f"{local}^^^LAB&{lab}&ISO^PI"
    if ins:
        pid3 += f"~{ins}^^^ASIP-SANTE-INS-NIR&{INS}&ISO^INS"
    segs = [f"MSH|^~\\&|SIL|LAB|PARCOURS|ARS|20261125101500+0100||ORU^R01^ORU_R01|{control}"
            "|P|2.5.1|||||FRA|UNICODE UTF-8",
            f"PID|1||{pid3}||{family}^CLAIRE^^^^^L||19740312|F" + "|" * 24 + status,
            f"ORC|{'CA' if cancel else 'RE'}|{order}^SIL|F{order}^SIL||CM",
            f"OBR|1|{order}^SIL|F{order}^SIL|24323-8^Metabolic panel^LN|||20261125074500"]
    for n, (code, name, value, unit, ref) in enumerate(PANEL, 1):
        value, result = (values or {}).get(n, (value, "F"))
        segs.append(f"OBX|{n}|NM|{code}^{name}^LN||{value}|{unit}^{unit}^UCUM|{ref}|N|||"
                    f"{result}|||20261125074500")
    return ("\r".join(segs) + "\r").encode()


def sequence() -> list[tuple[str, dict[str, Any], int]]:
    """The same envelopes on every call (their received_at included)."""
    return copy.deepcopy(_sequence())


@functools.cache
def _sequence() -> list[tuple[str, dict[str, Any], int]]:
    """Messages of a lab and a hospital, in arrival order: new and known patients, an INS
    linking a second lab's id, corrections and deletions of results, a cancelled order,
    redeliveries and a newer generation, an older message arriving late, ADT (admission,
    merge) and an identity-vigilance conflict in the middle."""
    out: list[tuple[str, dict[str, Any], int]] = []

    def add(raw: bytes, mid: int, key: str, generation: int = 0,
            drop_second_obx: bool = False) -> None:
        env = events_of(raw, mid)
        if drop_second_obx:
            env["events"][0]["observations"].pop(1)  # one M4 neither corrected nor deleted
        out.append((key, env, generation))

    ins_a, ins_c = "279035121518989", "277076322082910"
    add(oru("M1", "A1", ins=ins_a), 1, "A1")  # a new patient
    add(oru("M2", "A1", ins=ins_a, order="O2"), 2, "A1")  # the same, another order
    add(oru("M3", "B1", order="O3"), 3, "B1")  # another new patient, no INS
    add(oru("M4", "A1", ins=ins_a, values={1: ("6.0", "C"), 3: ("13.2", "D")}), 4, "A1")
    add(oru("M1", "A1", ins=ins_a), 1, "A1")  # a redelivery: nothing
    adt = edit(read(*FHIR, "ADT-A01-01.hl7"), "PID", 3, f"C1^^^LAB&{LAB_A}&ISO^PI")
    add(adt, 5, "C1")  # an ADT: envelope-at-a-time, in the middle of results
    add(oru("M6", "C1", order="O6"), 6, "C1")  # the patient the ADT created
    add(oru("M7", "D9", ins=ins_a, lab=LAB_B, order="O7"), 7, "D9")  # INS links D9 to A1
    add(oru("M8", "A1", ins=ins_c, order="O8"), 8, "A1")  # another INS: held (vigilance)
    add(oru("M9", "B1", order="O9", family="DURAND"), 9, "B1")  # demographics updated
    add(oru("M3b", "B1", family="MARTIN", order="O3b"), 3, "B1")  # older: names kept
    add(oru("M1", "A1", ins=ins_a), 1, "A1", generation=1, drop_second_obx=True)  # replay
    add(oru("M10", "A1", ins=ins_a, order="O2", cancel=True), 10, "A1")  # order cancelled
    add(oru("M11", "B1", order="O9", values={2: ("90", "C")}), 11, "B1")  # corrected
    merge = edit(edit(read(*FHIR, "ADT-A40-01.hl7"), "PID", 3, f"C1^^^LAB&{LAB_A}&ISO^PI"),
                 "MRG", 1, f"B1^^^LAB&{LAB_A}&ISO^PI")
    add(merge, 12, "C1")  # B1 merged into C1
    add(oru("M13", "B1", order="O13"), 13, "B1")  # B1's id now names C1
    add(oru("M14", "E1", status="VALI", ins="180017510000042", order="O14"), 14, "E1")
    add(oru("M15", "E1", status="VALI", ins="180017510000042", family="AUTRE",
            order="O15"), 15, "E1")  # traits contradict a qualified identity: held
    add(oru("M16", "D9", ins=ins_a, lab=LAB_B, order="O7", values={2: ("91", "C")}), 16,
        "D9")  # corrected, under the id the INS linked
    add(oru("M6", "C1", order="O6"), 6, "C1", generation=1, drop_second_obx=True)
    return out


def one_at_a_time(tl: TL, seq: list[tuple[str, dict[str, Any], int]]) -> list[Any]:
    """The reference: each envelope through Applier.apply in a transaction of its own."""
    results = []
    for _key, env, generation in seq:
        with tl.store.engine.begin() as conn:
            results.append(tl.timeline.applier.apply(conn, env, generation))
    return results


def dump(tl: TL) -> dict[str, list[dict[str, Any]]]:
    out = {}
    with tl.store.engine.connect() as conn:
        for table in TABLES:
            order = [c for c in table.c if c.primary_key]
            rows = conn.execute(select(table).order_by(*order)).mappings().all()
            out[table.name] = [{k: _plain(v) for k, v in r.items()
                                if k not in CLOCK and not (table is identity_history
                                                           and k == "at")} for r in rows]
    return out


def _plain(v: Any) -> Any:
    """The two stores' types made comparable (SQLite: naive UTC datetimes, 0/1 booleans)."""
    if isinstance(v, datetime):
        return (v.astimezone(UTC) if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
    return v


@pytest.fixture
def reference(tl_any: TL, tmp_path: Path, request: pytest.FixtureRequest
              ) -> Iterator[dict[str, Any]]:
    """The one-at-a-time result on the same kind of store (each store writes a datetime it
    read back into event data in its own way)."""
    if tl_any.store.dialect == "sqlite":
        yield from _reference(f"sqlite:///{tmp_path / 'reference.db'}")
    else:
        yield from _reference(next(request.getfixturevalue("pg_url_factory")))


def _reference(url: str) -> Iterator[dict[str, Any]]:
    t = TL(url)
    results = one_at_a_time(t, sequence())
    yield {"results": results, "rows": dump(t)}
    t.store.close()


@pytest.fixture
def pg_url_factory() -> Iterator[Iterator[str]]:
    """A second fresh PostgreSQL database (tests/conftest.py `pg_url` gives one a test)."""
    from tests.conftest import pg_url

    gen = pg_url.__wrapped__()  # type: ignore[attr-defined]
    try:
        yield gen
    finally:
        gen.close()


@pytest.mark.parametrize("chunk", [64, 3, 1])
def test_batch_apply_equals_one_at_a_time(tl_any: TL, reference: dict[str, Any],
                                          chunk: int, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setattr(service, "CHUNK_MAX", chunk)
    monkeypatch.setattr(service, "CHUNK_MIN", 1)
    monkeypatch.setattr(service, "TRANSACTION_BUDGET_S", 60.0)  # one transaction
    seq = sequence()
    results = tl_any.timeline.apply_many(seq)
    assert results == reference["results"]
    rows = dump(tl_any)
    assert [r["kind"] for r in rows["timeline_conflicts"]] == [
        "ins_mismatch", "demographics_mismatch"]  # the sequence holds what it should
    assert sum(1 for r in rows["observations"] if r["deleted"]) == 4  # O2 cancelled, O6's
    for name, expected in reference["rows"].items():
        assert rows[name] == expected, name


def test_results_take_the_set_based_path(tl_any: TL, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """Results of known and new patients never go through Applier.apply (the point of the
    batch); an ADT does."""
    calls: list[int] = []
    inner = tl_any.timeline.applier.apply

    def counted(conn: Any, env: dict[str, Any], generation: int = 0) -> dict[str, int]:
        calls.append(int(env["message_id"]))
        return inner(conn, env, generation)

    monkeypatch.setattr(tl_any.timeline.applier, "apply", counted)
    seq = [(f"P{n % 3}", events_of(oru(f"M{n}", f"P{n % 3}", order=f"O{n}"), n), 0)
           for n in range(1, 10)]
    adt = edit(read(*FHIR, "ADT-A01-01.hl7"), "PID", 3, f"P1^^^LAB&{LAB_A}&ISO^PI")
    seq.insert(4, ("P1", events_of(adt, 100), 0))
    results = tl_any.timeline.apply_many(seq)
    assert all(isinstance(r, dict) and r["applied"] >= 1 for r in results)
    assert calls == [100]
    assert len(tl_any.rows(observations)) == 9 * 3
    assert len(tl_any.rows(patients)) == 3


def test_a_failing_run_is_redone_one_by_one(tl_any: TL) -> None:
    """A row the database refuses fails its own envelope only: the run's savepoint is rolled
    back and its envelopes applied one at a time; the patient's later envelopes wait."""
    seq = [(f"P{n}", events_of(oru(f"M{n}", f"P{n}", order=f"O{n}"), n), 0)
           for n in range(1, 5)]
    seq[1][1]["events"][0]["observations"][0]["unit"] = "u" * 100  # over String(64)
    seq.append(("P2", events_of(oru("M9", "P2", order="O9"), 9), 0))
    results = tl_any.timeline.apply_many(seq)
    if tl_any.store.dialect == "sqlite":  # SQLite does not enforce VARCHAR lengths
        assert all(isinstance(r, dict) for r in results)
        return
    assert isinstance(results[1], Exception) and results[4] is None
    assert [r["applied"] for r in (results[0], results[2], results[3])] == [1, 1, 1]
    assert {o["message_id"] for o in tl_any.rows(observations)} == {1, 3, 4}


def test_long_batches_commit_within_the_budget(tl: TL, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    """The write lock is given back between chunks once the budget is spent (here at
    once): every chunk (of the smallest size) is its own transaction, so the intake never
    waits behind a batch."""
    monkeypatch.setattr(service, "TRANSACTION_BUDGET_S", 0.0)
    monkeypatch.setattr(service, "CHUNK_MIN", 2)
    commits: list[int] = []
    event.listen(tl.store.engine, "commit", lambda conn: commits.append(1))
    seq = [(f"P{n}", events_of(oru(f"M{n}", f"P{n}", order=f"O{n}"), n), 0)
           for n in range(1, 7)]
    tl.timeline.apply_many(seq)
    assert len(commits) == 3
    assert len(tl.rows(timeline_events)) == 6


def test_eligible_shapes() -> None:
    env = events_of(oru("M1", "A1"), 1)
    assert batch.eligible(env)
    assert not batch.eligible({**env, "patient": None})
    assert not batch.eligible({**env, "patient": {**env["patient"],
                                                  "withdrawn": [{"type": "INS"}]}})
    assert not batch.eligible(events_of(read(*FHIR, "ADT-A01-01.hl7"), 2))


def test_a_waiting_writer_ends_the_transaction_after_the_chunk_in_hand(
        tl: TL, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite: when another writer waits for the write gate (the intake's group commit), the
    batch commits after the chunk it is applying instead of filling its budget first. The
    gate's own detection of waiters is tested in tests/intake/test_write_gate.py."""
    from engine.store.write_gate import gate_of

    gate = gate_of(tl.store.engine)
    if gate is None:
        pytest.skip("PostgreSQL has no write gate: its writers do not queue on one lock")
    monkeypatch.setattr(service, "TRANSACTION_BUDGET_S", 60.0)
    monkeypatch.setattr(service, "CHUNK_MIN", 2)
    monkeypatch.setattr(service, "CHUNK_MAX", 2)  # chunks of two: three of them
    commits: list[int] = []
    event.listen(tl.store.engine, "commit", lambda conn: commits.append(1))
    seq = [(f"P{n}", events_of(oru(f"M{n}", f"P{n}", order=f"O{n}"), n), 0)
           for n in range(1, 7)]
    tl.timeline.apply_many(seq)
    assert len(commits) == 1  # nobody waits: one transaction for the whole batch

    commits.clear()
    monkeypatch.setattr(gate, "others_waiting", lambda: True)
    seq = [(f"Q{n}", events_of(oru(f"N{n}", f"Q{n}", order=f"R{n}"), n), 0)
           for n in range(1, 7)]
    tl.timeline.apply_many(seq)
    assert len(commits) == 3
    assert len(tl.rows(timeline_events)) == 12
