"""Scale-out that adds capacity: partitions spread over engine processes by leases with
fencing tokens (issue #12, engine/delivery/leases.py).

- Embedded (SQLite + in-memory bus, and the same on PostgreSQL): one process owns every
  partition, says so on /metrics and the dashboard, and a clean stop gives the leases back.
- A stale owner: a process whose lease moved to another while a delivery was in flight gets
  its outcome write refused (counted on /metrics), and its pass stops: the next delivery of
  that partition is not sent by it.
- Real processes on PostgreSQL + RabbitMQ: 1, 2, 3 `parcours serve` processes own ⌈P/N⌉ or
  ⌊P/N⌋ partitions each (their own /metrics); a clean stop hands over at once (no lease left
  in the stopped process's name); three processes, one killed with SIGKILL mid-stream: its
  partitions are taken over, order per patient holds, and every ACKed message has exactly one
  effect at an idempotent destination (one file per message, its bytes as received).
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from connectors.mllp.client import MLLPClient
from connectors.mllp.errors import MLLPError
from connectors.mllp.server import Peer
from engine.delivery.leases import PartitionLeases, share
from engine.store.database import Store
from engine.store.models import deliveries, delivery_attempts, engine_members, partition_leases
from tests.routing.test_rabbitmq import (
    EngineProcess,
    Recorder,
    adt,
    assert_one_delivered_row_each,
    by_patient,
    first_occurrences,
    rabbit_vhost,  # noqa: F401  (fixture)
    wait_all_done,
)
from transformers.hl7.ack import read_ack

OWNED = re.compile(r"^parcours_partitions_owned (\S+)$", re.M)
FENCED = re.compile(r"^parcours_delivery_outcomes_fenced_total (\S+)$", re.M)


def http_port(eng: Any) -> int:
    return int(eng.engine._http.servers[0].sockets[0].getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def gauge(body: str, pattern: re.Pattern[str] = OWNED) -> int:
    m = pattern.search(body)
    assert m, f"{pattern.pattern} not on /metrics"
    return int(float(m.group(1)))


def lease_rows(url: str) -> list[dict[str, Any]]:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(partition_leases).order_by(partition_leases.c.partition)).mappings()]
    finally:
        eng.dispose()


def test_share_is_ceil_or_floor_and_sums_to_p() -> None:
    for p in range(1, 17):
        for n in range(1, 6):
            members = [f"m{i}" for i in range(n)]
            shares = [share(p, members, m) for m in members]
            assert sum(shares) == p
            assert set(shares) <= {p // n, -(-p // n)}
    assert share(8, ["a", "b"], "ghost") == 0  # not a live member: owns nothing


def file_routes(out: Path) -> str:
    return f"""\
version: 1
channels:
  main: {{type: mllp, host: 127.0.0.1, port: 0}}
destinations:
  files: {{type: file, path: "{out}", filename: "{{message_id}}_{{route}}.{{ext}}"}}
routes:
  - name: adt
    when: {{message_type: ADT}}
    to: [files]
"""


# -- embedded: one process owns everything ----------------------------------------------------


@pytest.mark.timeout(60)
async def test_single_engine_owns_every_partition_and_gives_them_back_on_stop(
    store_url: str, make_engine: Any, tmp_path: Path
) -> None:
    """The embedded default runs the same code path: the lease table names this process
    for every partition, /metrics and the dashboard say so, delivery works as before."""
    out = tmp_path / "out"
    eng = await make_engine(file_routes(out), store_url=store_url, route=True, http=True,
                            partitions=8)
    me = eng.engine.leases.member_id
    rows = lease_rows(store_url)
    assert [r["partition"] for r in rows] == list(range(8))
    assert {r["owner"] for r in rows} == {me} and {r["token"] for r in rows} == {1}
    assert gauge(await asyncio.to_thread(scrape, http_port(eng))) == 8
    snap = __import__("engine.ui.dashboard", fromlist=["snapshot"]).snapshot(eng.engine)
    assert snap["partitions"] == {"owned": 8, "total": 8, "members": 1, "fenced": 0}

    ack = await eng.send(adt("E1", "E1-0"))
    assert read_ack(ack)[0] == "AA"
    for _ in range(200):
        if list(out.glob("*_adt.hl7")):
            break
        await asyncio.sleep(0.05)
    assert [p.name for p in out.iterdir()] == ["1_adt.hl7"]

    await eng.engine.stop()
    rows = lease_rows(store_url)
    assert {r["owner"] for r in rows} == {None}  # handed back at once, not left to expire
    store = create_engine(store_url)
    try:
        with store.connect() as conn:
            assert conn.execute(select(engine_members)).all() == []
    finally:
        store.dispose()


# -- a stale owner is fenced ------------------------------------------------------------------


class GatedRecorder(Recorder):
    """A downstream system that holds its answer to the first message until `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.first_arrived = asyncio.Event()

    async def _handle(self, payload: bytes, peer: Peer) -> bytes:
        if not self.first_arrived.is_set():
            self.first_arrived.set()
            await self.release.wait()
        return await super()._handle(payload, peer)


def mllp_routes(peer_port: int) -> str:
    return f"""\
version: 1
channels:
  main: {{type: mllp, host: 127.0.0.1, port: 0}}
destinations:
  peer:
    type: mllp
    host: 127.0.0.1
    port: {peer_port}
    timeout: 30
    retry: {{initial_delay: 0.05, max_delay: 0.5, max_attempts: 100}}
routes:
  - name: adt
    when: {{message_type: ADT}}
    to: [peer]
"""


@pytest.mark.timeout(90)
async def test_a_stale_owners_outcome_write_is_refused_and_its_pass_stops(
    store_url: str, make_engine: Any
) -> None:
    """Engine A delivers a message; while the receiver holds its answer, A stalls (its lease
    loop stops, as in a long GC pause or a network cut to the store) and another process
    takes the partition over. When A's delivery returns, the recorder refuses its outcome:
    the new owner's token is on the lease row. A sends nothing more for that partition."""
    async with GatedRecorder() as peer:
        eng = await make_engine(mllp_routes(peer.port), store_url=store_url, route=True,
                                http=True, partitions=1,
                                extra_env={"PARCOURS_LEASE_SECONDS": "1"})
        a = eng.engine
        assert read_ack(await eng.send(adt("PS", "PS-0")))[0] == "AA"
        assert read_ack(await eng.send(adt("PS", "PS-1")))[0] == "AA"
        await asyncio.wait_for(peer.first_arrived.wait(), 20)
        old_token = a.leases.token(0)
        assert old_token is not None

        # A stalls: its lease is no longer renewed.
        assert a.leases._task is not None
        a.leases._task.cancel()
        thief_store = Store(store_url)
        thief = PartitionLeases(thief_store, 1, lease_seconds=1.0)
        try:
            await thief.start()
            for _ in range(200):
                if thief.owned() == [0]:
                    break
                await asyncio.sleep(0.05)
            assert thief.owned() == [0]
            assert a.leases.token(0) is None  # A knows by its own clock it may not deliver
            rows = lease_rows(store_url)
            assert rows[0]["owner"] == thief.member_id and rows[0]["token"] == old_token + 1

            peer.release.set()  # A's delivery in flight comes back with AA
            port = http_port(eng)
            for _ in range(200):
                body = await asyncio.to_thread(scrape, port)
                if gauge(body, FENCED) >= 1:
                    break
                await asyncio.sleep(0.05)
            assert gauge(body, FENCED) == 1
            assert gauge(body, OWNED) == 0
            await asyncio.sleep(1.0)  # anything A would still send would arrive now

            with a.store.engine.connect() as conn:
                rows = [dict(r) for r in conn.execute(
                    select(deliveries).order_by(deliveries.c.id)).mappings()]
                tries = conn.execute(select(delivery_attempts)).all()
            # Nothing of A's outcome was written: the new owner finds both deliveries still
            # pending and sends PS-0 again with the same idempotency key.
            assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 0)] * 2
            assert tries == []
            assert [x.control_id for x in peer.arrivals] == ["PS-0"]  # PS-1 never sent by A
        finally:
            await thief.stop()
            thief_store.close()
        rows = lease_rows(store_url)
        assert rows[0]["owner"] is None and rows[0]["token"] == old_token + 1


# -- real processes on PostgreSQL + RabbitMQ --------------------------------------------------


def process_file_routes(out: Path, peer_port: int) -> str:
    return f"""\
version: 1
channels:
  main:
    type: mllp
    host: 127.0.0.1
    port: ${{PARCOURS_MLLP_PORT}}
destinations:
  files: {{type: file, path: "{out}", filename: "{{message_id}}_{{route}}.{{ext}}"}}
  peer:
    type: mllp
    host: 127.0.0.1
    port: {peer_port}
    timeout: 10
    retry: {{initial_delay: 0.05, max_delay: 0.5, max_attempts: 100}}
routes:
  - name: adt
    when: {{message_type: ADT}}
    to: [files, peer]
"""


def owned_by(engines: list[EngineProcess]) -> dict[str, int]:
    return {e.name: gauge(scrape(e.http_port)) for e in engines}


async def wait_shares(engines: list[EngineProcess], partitions: int,
                      timeout: float = 30.0) -> dict[str, int]:
    """Until every process owns ⌈P/N⌉ or ⌊P/N⌋ and together all P (their own /metrics)."""
    n = len(engines)
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(owned_by, engines)
        if sum(got.values()) == partitions and \
                set(got.values()) <= {partitions // n, -(-partitions // n)}:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"shares after {timeout} s: {got}")
        await asyncio.sleep(0.1)


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.timeout(150)
async def test_one_two_three_processes_share_partitions_and_a_clean_stop_hands_over(
    pg_url: str, rabbit_vhost: str, tmp_path: Path  # noqa: F811
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(process_file_routes(tmp_path / "out", 9))
    engines = [EngineProcess(tmp_path, f"e{i}", routes=routes, store_url=pg_url,
                             broker_url=rabbit_vhost, partitions=8) for i in (1, 2, 3)]
    seen: list[dict[str, int]] = []
    try:
        for i, e in enumerate(engines):
            e.start()
            await asyncio.to_thread(e.wait_ready)
            seen.append(await wait_shares(engines[:i + 1], 8))
        assert sorted(seen[0].values()) == [8]
        assert sorted(seen[1].values()) == [4, 4]
        assert sorted(seen[2].values()) == [2, 3, 3]
        # Clean stop: e2 gives its leases back before it exits — none is left to expire.
        stopped = engines[1]
        pid = stopped.proc.pid if stopped.proc else 0
        await asyncio.to_thread(stopped.stop)
        assert stopped.proc is not None and stopped.proc.returncode == 0, stopped.tail()
        rows = await asyncio.to_thread(lease_rows, pg_url)
        assert not [r for r in rows if r["owner"] and f":{pid}:" in r["owner"]], rows
        rest = [engines[0], engines[2]]
        assert sorted((await wait_shares(rest, 8)).values()) == [4, 4]
        rows = await asyncio.to_thread(lease_rows, pg_url)
        assert len({r["owner"] for r in rows}) == 2
    finally:
        for e in engines:
            await asyncio.to_thread(e.stop)
            await asyncio.to_thread(e.kill)
    print(f"\nshares with 1, 2, 3 processes: {seen}")


PATIENTS = 48
PER_PATIENT = 10
CONNECTIONS = 9


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_three_processes_one_killed_mid_stream(
    pg_url: str, rabbit_vhost: str, tmp_path: Path  # noqa: F811
) -> None:
    sent: dict[str, list[str]] = {}
    per_connection: list[list[bytes]] = [[] for _ in range(CONNECTIONS)]
    for seq in range(PER_PATIENT):
        for p in range(PATIENTS):
            patient = f"T{p:03d}"
            cid = f"{patient}-{seq:03d}"
            sent.setdefault(patient, []).append(cid)
            per_connection[p % CONNECTIONS].append(adt(patient, cid))
    all_ids = {c for ids in sent.values() for c in ids}
    total = len(all_ids)
    out = tmp_path / "out"
    routes = tmp_path / "routes.yaml"

    async with Recorder(delay=0.003) as peer:
        routes.write_text(process_file_routes(out, peer.port))
        engines = [EngineProcess(tmp_path, f"e{i}", routes=routes, store_url=pg_url,
                                 broker_url=rabbit_vhost, partitions=8) for i in (1, 2, 3)]
        killed: EngineProcess | None = None
        killed_share = 0
        kill_started = kill_done = 0.0
        taken_over_after = 0.0
        store = create_engine(pg_url)
        try:
            for e in engines:
                e.start()
            for e in engines:
                await asyncio.to_thread(e.wait_ready)
            shares = await wait_shares(engines, 8)

            async def sender(c: int, batch: list[bytes]) -> list[str]:
                """Behind a TCP balancer: when its engine dies, the sender resends the
                unacknowledged message to the next one (a resend of a committed message is a
                duplicate and gets the original ACK)."""
                target = c % 3
                client = MLLPClient("127.0.0.1", engines[target].mllp_port, ack_timeout=15,
                                    connect_timeout=2)
                codes: list[str] = []
                try:
                    for m in batch:
                        for _ in range(20):
                            try:
                                codes.append(read_ack(await client.send(m))[0])
                                break
                            except MLLPError:
                                await client.close()
                                target = (target + 1) % 3
                                client = MLLPClient("127.0.0.1", engines[target].mllp_port,
                                                    ack_timeout=15, connect_timeout=2)
                        else:
                            raise AssertionError("no engine takes the message")
                finally:
                    await client.close()
                return codes

            async def killer() -> None:
                nonlocal killed, killed_share, kill_started, kill_done, taken_over_after
                while len(peer.accepted()) < total // 4:
                    await asyncio.sleep(0.005)
                port = peer.arrivals[-1].peer_port  # a process delivering right now
                owners = [e for e in engines if port in e.local_ports()]
                assert len(owners) == 1, f"cannot tell which process sent from port {port}"
                killed = owners[0]
                killed_share = shares[killed.name]
                kill_started = time.monotonic()
                await asyncio.to_thread(killed.kill)
                kill_done = time.monotonic()
                rest = [e for e in engines if e is not killed]
                after = await wait_shares(rest, 8)
                assert sorted(after.values()) == [4, 4]
                taken_over_after = time.monotonic() - kill_done

            results = await asyncio.gather(killer(), *(
                sender(c, b) for c, b in enumerate(per_connection)))
            codes = [code for batch in results[1:] for code in batch]
            assert codes == ["AA"] * total
            originals = await wait_all_done(store, all_ids, timeout=90)
            assert killed is not None
            survivors = [e for e in engines if e is not killed]
            survivor_ports = set().union(*(e.local_ports() for e in survivors))
        finally:
            for e in engines:
                await asyncio.to_thread(e.stop)
                await asyncio.to_thread(e.kill)
            logs = {e.name: e.tail() for e in engines}
        arrivals = list(peer.arrivals)

    try:
        rows = assert_one_delivered_row_each(store, originals, {"files", "peer"})
    finally:
        store.dispose()
    assert len(rows) == 2 * total
    # Exactly one effect per ACKed message at the idempotent destination: one file each,
    # named by its delivery, holding the bytes as received. A SIGKILL in the middle of a
    # batch of file writes leaves their temp files; the new owner's retry of each delivery
    # writes the same temp name and renames it, so none is left.
    temps = [p.name for p in out.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]
    assert temps == [], temps
    files = {p.name: p for p in out.iterdir() if p.name not in temps}
    assert set(files) == {f"{m['id']}_adt.hl7" for m in originals}
    for m in originals:
        assert files[f"{m['id']}_adt.hl7"].read_bytes() == m["raw"]
    # Capacity: before the kill, all three processes delivered.
    before = [a for a in arrivals if a.at < kill_started]
    after = [a for a in arrivals if a.at > kill_done]
    assert before and after, logs
    assert {a.peer_port for a in after} <= survivor_ports, logs
    assert {a.peer_port for a in before} - survivor_ports, logs  # the killed one delivered
    # Every message arrived at the MLLP peer; a repeat is only a delivery in flight at the
    # kill (sent, not yet recorded): at most one per partition the killed process owned.
    counts = Counter(a.control_id for a in arrivals)
    assert set(counts) == all_ids
    doubled = {cid: n for cid, n in counts.items() if n > 1}
    assert len(doubled) <= killed_share and set(doubled.values()) <= {2}, doubled
    # Order per patient holds across the take-over.
    got = {patient: first_occurrences(ids) for patient, ids in by_patient(arrivals).items()}
    assert got == sent
    print(f"\nkilled {killed.name} (owned {killed_share} of 8) after {len(before)} deliveries; "
          f"survivors own 4 + 4 {taken_over_after:.1f} s after the kill; "
          f"repeats at the peer: {len(doubled)}")


async def test_metrics_names_include_ownership(make_engine: Any) -> None:
    eng = await make_engine(http=True)
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{http_port(eng)}/metrics")).text
    # An engine that does not route owns nothing.
    assert gauge(body) == 0 and gauge(body, FENCED) == 0
