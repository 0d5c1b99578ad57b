"""Destinations that refuse for a while, and for good (issue #3).

Every test runs on the embedded default (SQLite + in-process bus) and on the scaled one
(PostgreSQL + RabbitMQ, a fresh database and vhost per test), with a fast retry policy:

- an MLLP peer answering AE to one patient for a second (`on_ae: retry`): that patient's
  messages arrive later, in order, while another patient's messages to the same destination,
  in the same partition, keep flowing;
- an HTTP receiver answering 503 a few times: delivered after exponential backoff, every
  attempt recorded in `delivery_attempts`;
- a permanent refusal (HTTP 400, or AE with `on_ae: dead_letter`): dead-lettered (delivery
  dead, message failed); once the receiver is fixed, an operator's retry delivers it once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from connectors.mllp.client import MLLPClient
from engine.store.models import deliveries, delivery_attempts, messages
from tests.routing.test_rabbitmq import (
    Recorder,
    adt,
    by_patient,
    wait_all_done,
)
from transformers.hl7.ack import read_ack
from transformers.hl7.header import read_header

FAST_RETRY = "    retry: {initial_delay: 0.05, max_delay: 0.2, max_attempts: 50}\n"


def routes_to(destination: str) -> str:
    return f"""\
version: 1
channels:
  main: {{type: mllp, host: 127.0.0.1, port: 0}}
destinations:
  out:
{destination}routes:
  - name: adt
    when: {{message_type: ADT}}
    to: [out]
"""


def mllp_destination(port: int, on_ae: str) -> str:
    return (f"    type: mllp\n    host: 127.0.0.1\n    port: {port}\n    timeout: 5\n"
            f"    on_ae: {on_ae}\n" + FAST_RETRY)


def http_destination(url: str) -> str:
    return f"    type: http\n    url: {url}\n    timeout: 5\n" + FAST_RETRY


class WebPeer:
    """An HTTP receiver in a thread: `respond(control_id, n)` gives the status of the n-th
    request (1-based) carrying that message."""

    def __init__(self, respond: Callable[[str, int], int]) -> None:
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                at = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                raw = json.loads(body)["message"].encode()
                cid = read_header(raw).control_id
                with peer._lock:
                    n = 1 + sum(1 for r in peer.requests if r["control_id"] == cid)
                    status = peer.respond(cid, n)
                    peer.requests.append({"at": at, "control_id": cid, "status": status,
                                          "key": self.headers.get("Idempotency-Key"),
                                          "raw": raw})
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/in"

    def __enter__(self) -> WebPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of(self, control_id: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["control_id"] == control_id]


async def send(eng: Any, messages_: list[tuple[str, str]]) -> None:
    async with MLLPClient("127.0.0.1", eng.port()) as c:
        for patient, cid in messages_:
            assert read_ack(await c.send(adt(patient, cid)))[0] == "AA"


async def wait_status(store: Any, control_id: str, status: str, timeout: float = 30) -> int:
    """Wait until the message with this MSH-10 has `status`; return its id."""
    deadline = time.monotonic() + timeout
    while True:
        with store.connect() as conn:
            row = conn.execute(select(messages.c.id, messages.c.status)
                               .where(messages.c.control_id == control_id)).first()
        if row is not None and row.status == status:
            return int(row.id)
        if time.monotonic() > deadline:
            raise AssertionError(f"{control_id}: {row.status if row else 'absent'}, "
                                 f"not {status} after {timeout} s")
        await asyncio.sleep(0.05)


def delivery_of(store: Any, message_id: int) -> dict[str, Any]:
    with store.connect() as conn:
        return dict(conn.execute(select(deliveries).where(
            deliveries.c.message_id == message_id)).mappings().one())


def attempts_of(store: Any, delivery_id: int) -> list[dict[str, Any]]:
    with store.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(delivery_attempts).where(delivery_attempts.c.delivery_id == delivery_id)
            .order_by(delivery_attempts.c.id)).mappings()]


def gaps(times: list[Any]) -> list[float]:
    secs = [t.timestamp() if hasattr(t, "timestamp") else float(t) for t in times]
    return [b - a for a, b in zip(secs, secs[1:], strict=False)]


REFUSE_S = 1.0


@pytest.mark.timeout(90)
async def test_refusing_peer_holds_one_patient_in_order_while_others_flow(
    stack: dict[str, Any], make_engine: Any
) -> None:
    first_a: float | None = None

    def answer(patient: str, _cid: str) -> str:
        nonlocal first_a
        if patient != "PA":
            return "AA"
        if first_a is None:
            first_a = time.monotonic()
        return "AE" if time.monotonic() - first_a < REFUSE_S else "AA"

    a_ids = [f"PA-{i}" for i in range(8)]
    b_ids = [f"PB-{i}" for i in range(8)]
    async with Recorder(answer) as peer:
        # One partition: A and B share it, the hardest case for "other patients unaffected".
        eng = await make_engine(routes_to(mllp_destination(peer.port, on_ae="retry")),
                                route=True, partitions=1, **stack)
        await send(eng, [m for pair in zip(a_ids, b_ids, strict=True) for m in
                         (("PA", pair[0]), ("PB", pair[1]))])
        originals = await wait_all_done(eng.store.engine, set(a_ids + b_ids), timeout=30)
    store = eng.store.engine
    arrivals = list(peer.arrivals)
    # Both patients arrived complete and in order.
    assert by_patient(arrivals) == {"PA": a_ids, "PB": b_ids}
    # Only A's first message was refused: the later ones waited behind it.
    refused = [a for a in arrivals if a.code == "AE"]
    assert len(refused) >= 3 and {a.control_id for a in refused} == {"PA-0"}
    # B kept flowing: all of B arrived before A's first success.
    a_ok = [a for a in arrivals if a.patient == "PA" and a.code == "AA"]
    b_ok = [a for a in arrivals if a.patient == "PB"]
    assert max(b.at for b in b_ok) < a_ok[0].at
    assert first_a is not None and a_ok[0].at - first_a >= REFUSE_S
    # The store has every attempt of A's first message, with exponential backoff between.
    first_id = next(m["id"] for m in originals if m["control_id"] == "PA-0")
    row = delivery_of(store, first_id)
    tries = attempts_of(store, row["id"])
    assert [t["outcome"] for t in tries] == ["retry"] * len(refused) + ["delivered"]
    assert row["attempts"] == len(tries) and row["status"] == "delivered"
    assert all("AE" in (t["detail"] or "") for t in tries[:-1])
    g = gaps([t["at"] for t in tries])
    assert min(g) >= 0.05 * 0.8 - 0.005  # initial_delay less jitter
    assert g[2] >= 0.2 * 0.8 - 0.005  # 0.05 → 0.1 → 0.2 (max_delay)
    assert max(g) < 0.2 * 1.2 + 0.5  # capped by max_delay (plus scheduling slack)


@pytest.mark.timeout(90)
async def test_http_503_then_200_is_delivered_after_backoff(
    stack: dict[str, Any], make_engine: Any
) -> None:
    with WebPeer(lambda cid, n: 503 if cid == "PA-0" and n <= 3 else 200) as web:
        eng = await make_engine(routes_to(http_destination(web.url)), route=True,
                                partitions=1, **stack)
        await send(eng, [("PA", "PA-0"), ("PA", "PA-1"), ("PB", "PB-0")])
        originals = await wait_all_done(eng.store.engine, {"PA-0", "PA-1", "PB-0"},
                                        timeout=30)
    store = eng.store.engine
    ids = {m["control_id"]: m["id"] for m in originals}
    first = web.of("PA-0")
    assert [r["status"] for r in first] == [503, 503, 503, 200]
    assert len({r["key"] for r in first}) == 1  # the same Idempotency-Key every time
    assert first[-1]["raw"] == adt("PA", "PA-0")
    # Per patient: PA-1 went out only after PA-0 succeeded; PB was not held back.
    assert [r["status"] for r in web.of("PA-1")] == [200]
    assert web.of("PA-1")[0]["at"] > first[-1]["at"]
    assert web.of("PB-0")[0]["at"] < first[-1]["at"]
    row = delivery_of(store, ids["PA-0"])
    assert row["status"] == "delivered" and row["attempts"] == 4
    assert row["response"] == "HTTP 200" and row["last_error"] is None
    tries = attempts_of(store, row["id"])
    assert [t["outcome"] for t in tries] == ["retry", "retry", "retry", "delivered"]
    assert all("HTTP 503" in t["detail"] for t in tries[:3])
    assert min(gaps([r["at"] for r in first])) >= 0.05 * 0.8 - 0.005


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["http-400", "mllp-ae"])
async def test_permanent_refusal_dead_letters_then_operator_retry_delivers_once(
    stack: dict[str, Any], make_engine: Any, kind: str
) -> None:
    broken = True
    web = WebPeer(lambda _cid, _n: 400 if broken else 200)
    peer = Recorder(lambda _p, _cid: "AE" if broken else "AA")
    with web:
        async with peer:
            dest = (http_destination(web.url) if kind == "http-400"
                    else mllp_destination(peer.port, on_ae="dead_letter"))
            eng = await make_engine(routes_to(dest), route=True, **stack)
            store = eng.store.engine
            await send(eng, [("PD", "PD-0")])
            mid = await wait_status(store, "PD-0", "failed")
            row = delivery_of(store, mid)
            assert row["status"] == "dead" and row["attempts"] == 1  # no retry for a refusal
            assert ("HTTP 400" if kind == "http-400" else "AE") in row["last_error"]
            assert [t["outcome"] for t in attempts_of(store, row["id"])] == ["dead"]

            broken = False  # the receiver is fixed; the operator retries the delivery
            partitions = eng.engine.runner.retry([row["id"]])
            assert partitions == [row["partition"]]
            for p in partitions:
                eng.engine.bus.notify(p)
            await wait_status(store, "PD-0", "done")
            await asyncio.sleep(0.3)  # anything extra would arrive now
            after = delivery_of(store, mid)
            assert after["status"] == "delivered" and after["attempts"] == 1
            assert [t["outcome"] for t in attempts_of(store, row["id"])] == ["dead", "delivered"]
    got = ([r["status"] for r in web.requests] if kind == "http-400"
           else [a.code for a in peer.arrivals])
    assert got == ([400, 200] if kind == "http-400" else ["AE", "AA"])  # delivered once


@pytest.mark.timeout(60)
async def test_a_patient_blocked_beyond_one_batch_does_not_stall_the_others(
    make_engine: Any
) -> None:
    first_a: float | None = None

    def answer(patient: str, _cid: str) -> str:
        nonlocal first_a
        if patient != "PA":
            return "AA"
        if first_a is None:
            first_a = time.monotonic()
        return "AE" if time.monotonic() - first_a < 3.0 else "AA"

    async with Recorder(answer) as peer:
        eng = await make_engine(routes_to(mllp_destination(peer.port, on_ae="retry")),
                                route=True, partitions=1)
        eng.engine.runner.batch = 5  # stands for 200, to keep the test small
        a_ids = [f"PA-{i}" for i in range(6)]
        await send(eng, [("PA", c) for c in a_ids] + [("PB", "PB-0")])
        await wait_all_done(eng.store.engine, {*a_ids, "PB-0"}, timeout=30)
    arrivals = list(peer.arrivals)
    b_at = next(a.at for a in arrivals if a.patient == "PB")
    a_first_ok = next(a.at for a in arrivals if a.patient == "PA" and a.code == "AA")
    assert b_at < a_first_ok, "PB-0 waited for patient A's destination to recover"
