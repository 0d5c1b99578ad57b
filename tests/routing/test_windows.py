"""In-flight windows of the transport destinations (issue #12): mllp and http carry up to
`window` messages at once, never two of one patient, so per-(destination, patient) order
holds; amqp publishes a window and awaits its confirms together.

Through the running engine, on the embedded default and on PostgreSQL + RabbitMQ, with one
partition so that every patient shares the same delivery pass (the hardest case).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from channels.outbound.amqp import AMQPDestination
from channels.outbound.base import OutboundItem
from connectors.mllp.server import Peer
from tests.conftest import RABBIT_URL, require_service
from tests.routing.test_partitions_order import FAST_RETRY, routes_to, send
from tests.routing.test_rabbitmq import Recorder, by_patient, pid3, wait_all_done
from transformers.hl7.header import read_header

PATIENTS = [f"W{i}" for i in range(6)]


def interleaved(per_patient: int) -> list[tuple[str, str]]:
    return [(p, f"{p}-{n}") for n in range(per_patient) for p in PATIENTS]


class Concurrency:
    """What a receiver saw in flight: overall and per patient."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.most = 0
        self.most_one_patient = 0
        self._lock = threading.Lock()

    def enter(self, patient: str) -> None:
        with self._lock:
            self.now[patient] += 1
            self.most = max(self.most, sum(self.now.values()))
            self.most_one_patient = max(self.most_one_patient, self.now[patient])

    def leave(self, patient: str) -> None:
        with self._lock:
            self.now[patient] -= 1


class SlowRecorder(Recorder):
    def __init__(self, refuse_first: int = 0) -> None:
        self.seen = Concurrency()
        self.refusals_left = refuse_first
        super().__init__(self._answer, delay=0.05)

    def _answer(self, patient: str, control_id: str) -> str:
        if control_id == "W0-0" and self.refusals_left > 0:
            self.refusals_left -= 1
            return "AE"
        return "AA"

    async def _handle(self, payload: bytes, peer: Peer) -> bytes:
        patient = pid3(payload)
        self.seen.enter(patient)
        try:
            return await super()._handle(payload, peer)
        finally:
            self.seen.leave(patient)


def mllp_out(port: int, window: int | None) -> str:
    w = f"    window: {window}\n" if window else ""
    return (f"    type: mllp\n    host: 127.0.0.1\n    port: {port}\n    timeout: 5\n"
            f"    on_ae: retry\n{w}" + FAST_RETRY)


@pytest.mark.timeout(120)
async def test_mllp_window_overlaps_patients_and_keeps_each_in_order(
        stack: dict[str, Any], make_engine: Any) -> None:
    sent = interleaved(5)
    async with SlowRecorder(refuse_first=3) as peer:
        eng = await make_engine(routes_to(mllp_out(peer.port, window=4)), route=True,
                                partitions=1, **stack)
        await send(eng, sent)
        await wait_all_done(eng.store.engine, {cid for _, cid in sent}, timeout=60)
    expected = {p: [cid for q, cid in sent if q == p] for p in PATIENTS}
    assert by_patient(peer.arrivals) == expected  # each patient complete, in order, once
    assert peer.seen.most_one_patient == 1  # never two of one patient on the wire
    assert 1 < peer.seen.most <= 4  # the window was used, and not exceeded
    refused = [a.control_id for a in peer.arrivals if a.code == "AE"]
    assert refused == ["W0-0"] * 3
    # W0's later messages waited behind its refused first one.
    w0 = [a.control_id for a in peer.arrivals if a.patient == "W0"]
    assert w0[:4] == ["W0-0"] * 4
    # Connections: the engine opened at most the window.
    assert len({a.peer_port for a in peer.arrivals}) <= 4


async def test_mllp_default_window_is_one_message_at_a_time(make_engine: Any) -> None:
    sent = interleaved(3)
    async with SlowRecorder() as peer:
        eng = await make_engine(routes_to(mllp_out(peer.port, window=None)), route=True,
                                partitions=1)
        await send(eng, sent)
        await wait_all_done(eng.store.engine, {cid for _, cid in sent}, timeout=60)
    assert peer.seen.most == 1
    assert by_patient(peer.arrivals) == {p: [c for q, c in sent if q == p] for p in PATIENTS}


class SlowWebPeer:
    """An HTTP receiver that takes a while per request and records what it saw in flight."""

    def __init__(self) -> None:
        self.seen = Concurrency()
        self.arrivals: list[tuple[str, str, str]] = []  # patient, control id, idempotency key
        self._lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                raw = json.loads(body)["message"].encode()
                patient = pid3(raw)
                peer.seen.enter(patient)
                try:
                    time.sleep(0.05)
                    with peer._lock:
                        peer.arrivals.append((patient, read_header(raw).control_id,
                                              self.headers.get("Idempotency-Key", "")))
                finally:
                    peer.seen.leave(patient)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlowWebPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/in"


@pytest.mark.timeout(120)
async def test_http_window_overlaps_patients_and_keeps_each_in_order(
        stack: dict[str, Any], make_engine: Any) -> None:
    sent = interleaved(5)
    with SlowWebPeer() as peer:
        out = f"    type: http\n    url: {peer.url}\n    timeout: 5\n    window: 3\n" + FAST_RETRY
        eng = await make_engine(routes_to(out), route=True, partitions=1, **stack)
        await send(eng, sent)
        await wait_all_done(eng.store.engine, {cid for _, cid in sent}, timeout=60)
    got: dict[str, list[str]] = {}
    for patient, cid, _key in peer.arrivals:
        got.setdefault(patient, []).append(cid)
    assert got == {p: [c for q, c in sent if q == p] for p in PATIENTS}
    assert peer.seen.most_one_patient == 1
    assert 1 < peer.seen.most <= 3
    assert len({key for *_, key in peer.arrivals}) == len(sent)


@pytest.mark.timeout(120)
async def test_amqp_window_publishes_every_message_once_in_patient_order(
        stack: dict[str, Any], make_engine: Any) -> None:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    name = f"parcours.test.window.{uuid.uuid4().hex[:8]}"
    exchange = Exchange(name, type="topic", durable=True)
    queue = Queue(f"{name}.q", exchange=exchange, routing_key="parcours.#", durable=False,
                  auto_delete=False)
    sent = interleaved(8)
    with Connection(RABBIT_URL) as conn:
        queue.bind(conn.channel()).declare()
        try:
            out = f"    type: amqp\n    url: \"{RABBIT_URL}\"\n    exchange: {name}\n"
            text = routes_to(out).replace("    to: [out]", "    transform: [event_summary]\n"
                                                       "    to: [out]")
            eng = await make_engine(text, route=True, partitions=1, **stack)
            await send(eng, sent)
            await wait_all_done(eng.store.engine, {cid for _, cid in sent}, timeout=60)
            got: dict[str, list[str]] = {}
            ids: list[str] = []
            with conn.SimpleQueue(queue) as sq:
                for _ in sent:
                    m = sq.get(timeout=10)
                    cid = m.payload["control_id"]
                    got.setdefault(cid.split("-")[0], []).append(cid)
                    ids.append(m.properties["message_id"])
                    m.ack()
                assert sq.qsize() == 0
        finally:
            conn.channel().queue_delete(f"{name}.q")
            conn.channel().exchange_delete(name)
    assert sorted(sum(got.values(), [])) == sorted(cid for _, cid in sent)
    for patient, cids in got.items():
        assert cids == [c for q, c in sent if q == patient]
    assert len(set(ids)) == len(sent)


def _item(n: int, patient: str) -> OutboundItem:
    return OutboundItem(delivery_id=n, message_id=n, route="r", destination="bus",
                        payload=json.dumps({"n": n}).encode(), content_type="application/json",
                        patient_key=patient, attempt=1, idempotency_key=f"{n}:r:bus:0")


async def test_amqp_window_with_the_broker_unreachable_retries_first_of_each_patient() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = AMQPDestination("bus", {"url": f"amqp://guest:guest@127.0.0.1:{port}//",
                                   "exchange": "x", "timeout": 2})
    items = [_item(1, "A"), _item(2, "B"), _item(3, "A")]
    outcomes = await asyncio.wait_for(dest.send_batch(items), 30)
    assert [o.kind if o else None for o in outcomes] == ["retry", "retry", None]
    assert outcomes[0] is not None and "publish failed" in outcomes[0].detail
    await dest.close()
