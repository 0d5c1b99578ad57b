"""The bus: "partition p has work" notices over kombu and RabbitMQ (the embedded default uses
engine/delivery/local_bus.py instead).

Why notices and not the deliveries themselves: the store is the truth. A notice lost with a
broker, or redelivered twice, changes nothing — the partition runner reads what is pending
from the store. The bus exists to spread partitions over engine processes with per-patient
order: N durable queues `parcours.partition.<p>`. A process consumes only the queues of the
partitions it holds a lease on (engine/delivery/leases.py): `set_partitions` adds and cancels
per-queue consumers as ownership moves, so a notice reaches the owner. The queues keep
RabbitMQ's single-active-consumer as a second guard during a hand-over (the old owner's
consumer stays the active one until it cancels). A notice published while a partition has
no consumer waits in its durable queue; one the old owner took and dropped is covered by
the new owner's sweep of the store at acquisition.

Threading: kombu is blocking, so one consumer thread per process drains the owned partition
queues and hands each notice to the event loop; a notice is acknowledged from that same
thread once the loop has finished the partition pass it triggered (pyamqp channels are not
thread-safe). Publishing happens from a separate thread-owned connection with publisher
confirms.

Heartbeats: py-amqp never sends or checks heartbeats on its own; the owner of a connection
must call `heartbeat_check()` about once a second and read what the broker sends. Without it
RabbitMQ closes an idle connection after its heartbeat timeout ("missed heartbeats from
client"): the consumer would reconnect every minute (handing its partitions to another
process mid-pass) and the first notice after an idle minute would be lost with the
publisher's dead connection. Both threads therefore tick heartbeats while idle.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.exceptions import OperationalError

log = logging.getLogger("parcours.bus")

EXCHANGE = Exchange("parcours.work", type="direct", durable=True)
HEARTBEAT_S = 20  # negotiated with the broker; ticked every IDLE_TICK_S while idle
IDLE_TICK_S = 1.0


def partition_queue(p: int) -> Queue:
    return Queue(
        f"parcours.partition.{p}",
        exchange=EXCHANGE,
        routing_key=f"p{p}",
        durable=True,
        queue_arguments={"x-single-active-consumer": True},
    )


def _transport_options(url: str) -> dict[str, Any]:
    if url.startswith("memory"):
        return {"polling_interval": 0.005}
    return {"confirm_publish": True}


class Bus:
    def __init__(
        self,
        url: str,
        partitions: int,
        on_notice: Callable[[int], Awaitable[None]],
        *,
        prefetch: int | None = None,
        consume: Iterable[int] | None = None,
    ) -> None:
        """`consume`: the partitions to consume at start (None: every one); the engine
        starts with none and follows its leases through `set_partitions`."""
        self.url = url
        self.partitions = partitions
        self._on_notice = on_notice
        self._prefetch = prefetch or max(partitions, 1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._consumer_thread: threading.Thread | None = None
        self._publisher_thread: threading.Thread | None = None
        self._outbox: queue.Queue[int | None] = queue.Queue()
        # Memory transport: both threads must share one Connection's in-process broker.
        self._memory = url.startswith("memory")
        self.connected = False
        self.published = 0
        self.consumed = 0
        self.publish_failures = 0
        self._wanted: frozenset[int] = frozenset(range(partitions) if consume is None
                                                 else consume)
        self._wanted_version = 0
        self._applied_version = -1

    @property
    def is_memory(self) -> bool:
        return self._memory

    def _connection(self) -> Connection:
        return Connection(self.url, transport_options=_transport_options(self.url),
                          heartbeat=0 if self._memory else HEARTBEAT_S, connect_timeout=5)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stop.clear()
        self._consumer_thread = threading.Thread(target=self._consume_forever,
                                                 name="parcours-bus-consumer", daemon=True)
        self._publisher_thread = threading.Thread(target=self._publish_forever,
                                                  name="parcours-bus-publisher", daemon=True)
        self._publisher_thread.start()
        self._consumer_thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._outbox.put(None)
        for t in (self._consumer_thread, self._publisher_thread):
            if t is not None and t.is_alive():
                t.join(timeout)

    def notify(self, partition: int) -> None:
        """Thread-safe, non-blocking: tell whoever owns `partition` to look at the store."""
        self._outbox.put(partition)

    @property
    def consuming(self) -> frozenset[int]:
        return self._wanted

    async def set_partitions(self, partitions: Iterable[int], timeout: float = 5.0) -> None:
        """Consume exactly these partition queues. Returns once the consumer thread has
        added and cancelled the consumers (basic.cancel is confirmed by the broker, and
        notices delivered before it were handed to the loop), or the bus is not connected
        (then nothing is consumed at all and the next connection starts from this set)."""
        self._wanted = frozenset(partitions)
        self._wanted_version += 1
        version = self._wanted_version
        deadline = time.monotonic() + timeout
        while (self._applied_version < version and self.connected
               and self._consumer_thread is not None and self._consumer_thread.is_alive()
               and time.monotonic() < deadline):
            await asyncio.sleep(0.01)

    # -- publisher ------------------------------------------------------------------------

    def _publish_forever(self) -> None:
        while not self._stop.is_set():
            try:
                with self._connection() as conn:
                    conn.ensure_connection(max_retries=1)
                    producer = Producer(conn.channel(), exchange=EXCHANGE)
                    for p in range(self.partitions):
                        partition_queue(p).bind(producer.channel).declare()
                    self._publish_loop(conn, producer)
            except (OperationalError, OSError, ConnectionError) as exc:
                if not self._stop.is_set():
                    log.warning("bus publisher disconnected; retrying",
                                extra={"error": type(exc).__name__})
                    time.sleep(1.0)
            except Exception:
                if not self._stop.is_set():
                    log.exception("bus publisher failed; retrying")
                    time.sleep(1.0)

    def _keepalive(self, conn: Connection) -> None:
        """Idle publisher: read the broker's heartbeats, send ours, notice a dead broker."""
        if self._memory:
            return
        try:
            conn.drain_events(timeout=0.01)  # nothing but heartbeats arrives here when idle
        except TimeoutError:
            pass
        conn.heartbeat_check()

    def _publish_loop(self, conn: Connection, producer: Producer) -> None:
        while not self._stop.is_set():
            try:
                item = self._outbox.get(timeout=IDLE_TICK_S)
            except queue.Empty:
                self._keepalive(conn)
                continue
            if item is None:
                return
            pending = {item}
            # Coalesce: one notice per partition per burst is enough.
            while True:
                try:
                    nxt = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._stop.set()
                    break
                pending.add(nxt)
            todo = sorted(pending)
            for i, p in enumerate(todo):
                try:
                    producer.publish({"partition": p}, routing_key=f"p{p}",
                                     delivery_mode=2, serializer="json", retry=False)
                    self.published += 1
                except Exception:
                    self.publish_failures += 1
                    # Not confirmed: publish again once reconnected (the store still has the
                    # work and the sweeper would notify too, but later).
                    for q in todo[i:]:
                        self._outbox.put(q)
                    raise

    # -- consumer -------------------------------------------------------------------------

    def _consume_forever(self) -> None:
        while not self._stop.is_set():
            try:
                with self._connection() as conn:
                    conn.ensure_connection(max_retries=1)
                    self._consume(conn)
            except (OperationalError, OSError, ConnectionError) as exc:
                self.connected = False
                if not self._stop.is_set():
                    log.warning("bus consumer disconnected; retrying",
                                extra={"error": type(exc).__name__})
                    time.sleep(1.0)
            except Exception:
                self.connected = False
                if not self._stop.is_set():
                    log.exception("bus consumer failed; retrying")
                    time.sleep(1.0)

    def _consume(self, conn: Connection) -> None:
        channel = conn.channel()
        channel.basic_qos(0, self._prefetch, False)
        in_flight: list[tuple[Any, Future[None]]] = []

        def on_message(body: dict[str, Any], message: Any) -> None:
            p = int(body.get("partition", -1))
            if not 0 <= p < self.partitions or self._loop is None:
                message.ack()
                return
            self.consumed += 1
            fut = asyncio.run_coroutine_threadsafe(self._on_notice(p), self._loop)
            in_flight.append((message, fut))

        consumers: dict[int, Consumer] = {}

        def follow_ownership() -> None:
            version = self._wanted_version
            wanted = self._wanted
            for p in sorted(set(consumers) - wanted):
                consumers.pop(p).cancel()
            for p in sorted(wanted - set(consumers)):
                c = Consumer(channel, queues=[partition_queue(p)], callbacks=[on_message],
                             accept=["json"], no_ack=False)
                c.consume()
                consumers[p] = c
            self._applied_version = version

        try:
            follow_ownership()
            self.connected = True
            log.info("bus consumer ready", extra={"partitions": len(consumers),
                                                  "transport": conn.transport_cls})
            while not self._stop.is_set():
                if self._applied_version != self._wanted_version:
                    follow_ownership()
                try:
                    conn.drain_events(timeout=0.05)
                except TimeoutError:
                    pass
                except OSError as exc:
                    if "timed out" not in str(exc):
                        raise
                conn.heartbeat_check()  # no-op on the memory transport
                # Ack, from this thread, the notices whose partition pass has finished.
                still: list[tuple[Any, Future[None]]] = []
                for message, fut in in_flight:
                    if fut.done():
                        if not fut.cancelled() and fut.exception() is not None:
                            log.error("partition pass failed",
                                      extra={"error": repr(fut.exception())})
                        message.ack()
                    else:
                        still.append((message, fut))
                in_flight[:] = still
        finally:
            self.connected = False
            # Notices not acknowledged go back to the broker with this connection. Stop the
            # passes they started here (each finishes and records its delivery in flight):
            # the lease, not the connection, says who owns the partition, and the owner's
            # sweep restarts the pass from the store.
            for _message, fut in in_flight:
                fut.cancel()
