"""Latency of `GET /fhir/r4/Observation?patient=X&code=Y` on a large timeline (issue #13).

    .venv/bin/python bench/fhir_observations.py [--observations 1000000] [--patient-share 20000]
        [--requests 300] [--store-url postgresql+psycopg://…/db] [--drop-index]

Builds a store with `--observations` observations (set-based: one INSERT … SELECT over a
generated sequence per table), `--patient-share` of them on patient 1, the rest spread over
10,000 other patients; 20 LOINC codes in turn, ten observations a report. Then serves the
FHIR router over real HTTP (uvicorn, the same router `parcours serve` mounts) and times, one
request at a time, a clinician in the patient's care circle asking for one code (page of 50,
`total` counted), with and without `_sort=-date`, and the first page of every code of the
patient (`Observation?patient=X`). Goal in the issue: p95 < 50 ms. `--drop-index` drops the
index of migration 0011_fhir first, to show what it is for.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from sqlalchemy import text  # noqa: E402

from engine.fhir import default_registry  # noqa: E402
from engine.fhir.router import build_router  # noqa: E402
from engine.store.database import Store  # noqa: E402
from engine.timeline import Timeline, TimelineSettings, auth  # noqa: E402

CODES = ["2345-7", "14749-6", "2160-0", "14682-9", "3091-6", "2951-2", "2823-3", "2075-0",
         "2028-9", "17861-6", "19123-9", "2777-1", "2093-3", "2085-9", "13457-7", "2571-8",
         "1975-2", "1742-6", "1920-8", "2324-2"]
OTHER_PATIENTS = 10_000
PER_REPORT = 10


def _seq(dialect: str, n: int) -> str:
    if dialect == "sqlite":
        return (f"WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq "
                f"WHERE i < {n}) ")
    return ""


def _from_seq(dialect: str, n: int) -> str:
    return "FROM seq" if dialect == "sqlite" else f"FROM generate_series(1, {n}) AS seq(i)"


def _minutes(dialect: str, expr: str) -> str:
    if dialect == "sqlite":
        return f"datetime('2020-01-01', '+' || ({expr}) || ' minutes')"
    return f"(TIMESTAMPTZ '2020-01-01 00:00:00+00' + ({expr}) * INTERVAL '1 minute')"


def generate(store: Store, observations: int, share: int) -> None:
    """Patients, one care circle row, reports (timeline events) and observations."""
    db = store.engine
    dialect = db.dialect.name
    reports = observations // PER_REPORT
    own_reports = share // PER_REPORT
    now = "CURRENT_TIMESTAMP"
    with db.begin() as conn:
        conn.execute(text(
            _seq(dialect, OTHER_PATIENTS + 1)
            + "INSERT INTO patients (id, created_at, updated_at, family, given, birth_date, sex) "
            f"SELECT i, {now}, {now}, 'BENCH', 'P' || i, '19700101', 'F' "
            + _from_seq(dialect, OTHER_PATIENTS + 1)))
        conn.execute(text(
            "INSERT INTO care_circle (patient_id, professional_id, source, role, first_at, "
            f"last_at) VALUES (1, '801234567897', 'adt', 'attending', {now}, {now})"))
        # report r: patient 1 for the first `own_reports`, else spread over the others
        patient = (f"CASE WHEN i <= {own_reports} THEN 1 ELSE 2 + (i % {OTHER_PATIENTS}) END")
        conn.execute(text(
            _seq(dialect, reports)
            + "INSERT INTO timeline_events (id, patient_id, type, key, status, at, title, code, "
            "data, message_id, last_message_id, masked_ps, invisible_patient, invisible_legal, "
            "created_at, updated_at) "
            f"SELECT i, {patient}, 'result', 'bench|' || i, 'active', "
            f"{_minutes(dialect, f'i * {PER_REPORT}')}, 'Bilan', 'BIOCHIMIE', "
            "'{\"code\": {\"code\": \"BIOCHIMIE\", \"system\": \"L\"}, \"status\": \"F\"}', "
            f"i, i, false, false, false, {now}, {now} " + _from_seq(dialect, reports)))
        ncodes = len(CODES)
        loinc = "CASE (i % {n}) {cases} END".format(
            n=ncodes, cases=" ".join(f"WHEN {k} THEN '{c}'" for k, c in enumerate(CODES)))
        event = f"((i - 1) / {PER_REPORT} + 1)"
        obs_patient = (f"CASE WHEN {event} <= {own_reports} THEN 1 "
                       f"ELSE 2 + ({event} % {OTHER_PATIENTS}) END")
        conn.execute(text(
            _seq(dialect, observations)
            + "INSERT INTO observations (id, patient_id, event_id, key, loinc, display, outcome, "
            "value, value_num, value_text, unit, reference_low, reference_high, abnormal_flag, "
            "status, deleted, performing_lab, observed_at, original_code, original_system, "
            "original_value, original_unit, message_id) "
            f"SELECT i, {obs_patient}, {event}, 'k' || i, {loinc}, 'Bench analyte', "
            "'normalised', '5.1', 5.1 + (i % 7), '5.1', 'mmol/L', '3.9', '6.1', 'N', 'F', "
            f"false, 'LABO-BENCH', {_minutes(dialect, 'i')}, 'C' || (i % {ncodes}), 'L', "
            f"'1,0', 'g/L', {event} " + _from_seq(dialect, observations)))
    if dialect == "postgresql":
        with db.begin() as conn:
            for table in ("patients", "timeline_events", "observations"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
    with db.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()


def serve(timeline: Timeline) -> tuple[uvicorn.Server, int]:
    app = FastAPI()
    app.include_router(build_router(timeline, default_registry()))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, port


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def measure(base: str, token: str, requests: int, params: dict[str, str]
                  ) -> tuple[list[float], int]:
    times, total = [], 0
    async with httpx.AsyncClient(base_url=base, headers={
            "Authorization": f"Bearer {token}"}, timeout=60) as c:
        for i in range(requests + 5):
            start = time.perf_counter()
            r = await c.get("/fhir/r4/Observation", params=params)
            elapsed = time.perf_counter() - start
            assert r.status_code == 200, r.text
            total = r.json()["total"]
            if i >= 5:  # warm-up requests are not counted
                times.append(elapsed * 1000)
    return times, total


def breakdown(timeline: Timeline, token: str, runs: int) -> list[tuple[str, float]]:
    """Where one request's time goes, in this process (medians of `runs`), same query."""
    from engine.fhir import search as searching
    from engine.fhir.context import Context
    from engine.fhir.observation import filtered, observations, resource

    registry = default_registry()
    items = [("patient", "1"), ("code", "http://loinc.org|2345-7")]
    o = observations.c
    stages: dict[str, list[float]] = {k: [] for k in (
        "authenticate (token lookup)", "care circle + query build", "count (total)",
        "page of 50 rows", "50 resources mapped", "audit row committed")}
    for _ in range(runs):
        t0 = time.perf_counter()
        who = timeline.auth.authenticate(token)
        t1 = time.perf_counter()
        with timeline.db.connect() as conn:
            ctx = Context(timeline, registry, who, None, "http://bench/fhir/r4", conn)
            query = searching.parse(registry, "Observation", items)
            stmt = filtered(ctx, query)
            t2 = time.perf_counter()
            from sqlalchemy import func, select

            conn.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
            t3 = time.perf_counter()
            rows = [dict(r) for r in conn.execute(stmt.order_by(
                o.observed_at.desc(), o.id.desc()).limit(50)).mappings()]
            t4 = time.perf_counter()
            from engine.fhir import model

            model.CHECK.set(False)
            [resource(ctx, r) for r in rows]
            t5 = time.perf_counter()
        ctx.audit("fhir.search", {"type": "Observation"})
        t6 = time.perf_counter()
        for key, a, b in zip(stages, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6),
                             strict=True):
            stages[key].append((b - a) * 1000)
    return [(k, statistics.median(v)) for k, v in stages.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--patient-share", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--store-url")
    parser.add_argument("--drop-index", action="store_true")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="fhir-bench-")
    url = args.store_url or f"sqlite:///{tmp}/bench.db"
    store = Store(url)
    store.migrate()
    started = time.perf_counter()
    generate(store, args.observations, args.patient_share)
    print(f"store: {store.engine.dialect.name}, {args.observations:,} observations "
          f"({args.patient_share:,} on patient 1), generated in "
          f"{time.perf_counter() - started:.1f} s")
    if args.drop_index:
        with store.engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_observations_patient_loinc_observed"))
        print("index ix_observations_patient_loinc_observed dropped")
    timeline = Timeline(store.engine, TimelineSettings())
    _, token = auth.add_user(store.engine, "bench", "clinician", "801234567897")
    server, port = serve(timeline)
    base = f"http://127.0.0.1:{port}"
    print("| query | requests | total | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    cases = [("patient=1&code=http://loinc.org|2345-7",
              {"patient": "1", "code": "http://loinc.org|2345-7"}),
             ("… &_sort=-date", {"patient": "1", "code": "http://loinc.org|2345-7",
                                 "_sort": "-date"}),
             ("patient=1&code=2345-7 (any system)", {"patient": "1", "code": "2345-7"}),
             ("patient=1 (every code)", {"patient": "1"})]
    try:
        for label, params in cases:
            times, total = asyncio.run(measure(base, token, args.requests, params))
            print(f"| {label} | {len(times)} | {total:,} | {statistics.median(times):.1f} | "
                  f"{percentile(times, 95):.1f} | {percentile(times, 99):.1f} |")
        print()
        print("| stage (in process, median) | ms |")
        print("|---|---|")
        for label, ms in breakdown(timeline, token, 50):
            print(f"| {label} | {ms:.2f} |")
    finally:
        server.should_exit = True
        store.close()


if __name__ == "__main__":
    main()
