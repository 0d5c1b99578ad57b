"""MLLP listener (inbound endpoint): frames in, handler replies out, in order.

The listener is a transport: it knows framing, sockets, TLS and flow control, and nothing of
the message store or the router. The consumer that owns the policy (when to ACK, what to
answer) is the ``handler`` it is given.

Handler contract, and why it looks like this
--------------------------------------------
``handler(payload, peer)`` is called *synchronously*, in frame order, as soon as a frame is
complete. It returns an awaitable; a per-connection writer awaits those awaitables *in
order* and writes each non-None reply as a frame. The HL7 MLLP transport spec (HL7 v2.5.1
Appendix C / MLLP Release 2) requires the acknowledgements on a connection to come back in
the order the messages were sent, which the ordered await guarantees whatever the handler
does. The synchronous call lets the engine start work for frame N+1 (e.g. queue it for a
batched commit) before frame N is acknowledged: a handler that returns a Future or Task gets
pipelining; a handler written as ``async def`` returns a coroutine that only runs when the
writer reaches it, i.e. one message at a time, which is the safe default.

``None`` as a reply sends nothing (HL7 accept-acknowledgment type NE).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from connectors.mllp.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    Frame,
    FrameDecoder,
    FrameEvent,
    Junk,
    Oversized,
    frame,
)
from connectors.mllp.keepalive import enable_keepalive
from connectors.mllp.tls import peer_subject, subject_allowed

log = logging.getLogger("parcours.mllp")

READ_SIZE = 64 * 1024
TLS_HANDSHAKE_TIMEOUT_S = 30.0
DEFAULT_CLOSE_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a frame: enough for the engine to attribute and audit it."""

    host: str
    port: int
    tls_subject: str | None
    connection_id: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


Handler: TypeAlias = Callable[[bytes, Peer], Awaitable[bytes | None]]
OversizedHandler: TypeAlias = Callable[[bytes, int, Peer], Awaitable[bytes | None]]
ConnectionCallback: TypeAlias = Callable[[bool, Peer], None]


@dataclass(slots=True)
class ServerStats:
    """Counters for the dashboard; plain ints so reading them needs no lock."""

    connections_total: int = 0
    connections_open: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    junk_bytes: int = 0
    oversized_frames: int = 0
    truncated_frames: int = 0
    tls_rejected: int = 0  # handshake succeeded but the subject is not in allowed_subjects
    tls_handshake_failed: int = 0  # no, invalid or untrusted certificate, or not TLS at all
    handler_errors: int = 0
    peak_pending_bytes: int = 0  # largest partial frame held by one connection's decoder


class MLLPServer:
    """An MLLP listener on one address. See the module docstring for the handler contract."""

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "0.0.0.0",
        port: int = 2575,
        ssl_context: ssl.SSLContext | None = None,
        allowed_subjects: Sequence[str] | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        idle_timeout: float | None = 300.0,
        keepalive: bool = True,
        max_in_flight: int = 64,
        on_oversized: OversizedHandler | None = None,
        on_connection: ConnectionCallback | None = None,
        name: str = "mllp",
    ) -> None:
        if allowed_subjects is not None and ssl_context is None:
            raise ValueError("allowed_subjects needs an ssl_context that verifies clients")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.handler = handler
        self.host = host
        self._port = port
        self.ssl_context = ssl_context
        self.allowed_subjects = list(allowed_subjects) if allowed_subjects is not None else None
        self.max_frame_bytes = max_frame_bytes
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.max_in_flight = max_in_flight
        self.on_oversized = on_oversized
        self.on_connection = on_connection
        self.name = name
        self.stats = ServerStats()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._next_id = 0
        self._closing = False

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        if self._server is not None:
            return
        self._closing = False
        # TLS is negotiated per connection in _Connection (StreamWriter.start_tls), not by
        # start_server(ssl=...): that way a failed handshake is counted and logged with the
        # peer address instead of disappearing into asyncio's debug log.
        self._server = await asyncio.start_server(
            self._on_client, self.host, self._port, backlog=1024, limit=READ_SIZE * 4
        )
        log.info(
            "listening on %s:%d",
            self.host,
            self.port,
            extra={"channel": self.name, "tls": self.ssl_context is not None},
        )

    async def close(self, grace: float = DEFAULT_CLOSE_GRACE_S) -> None:
        """Stop accepting, stop reading, let replies already in flight be written for up to
        ``grace`` seconds, then close every connection."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.stop_reading()
        tasks = [conn.task for conn in connections if conn.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                log.warning(
                    "closing %d connection(s) with replies still pending",
                    len(pending),
                    extra={"channel": self.name},
                )
                for conn in connections:
                    conn.abort()
                await asyncio.wait(pending, timeout=1.0)
        await self._server.wait_closed()
        self._server = None
        log.info("listener closed", extra={"channel": self.name})

    async def __aenter__(self) -> MLLPServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        self._next_id += 1
        conn = _Connection(self, reader, writer, self._next_id)
        conn.task = asyncio.current_task()
        self._connections.add(conn)
        try:
            await conn.serve()
        finally:
            self._connections.discard(conn)

    def push(self, address: str, payload: bytes) -> bool:
        """Queue an unsolicited frame on the live connection from `address` ("host:port"),
        after the replies already owed on it. Used for HL7 enhanced-mode application
        acknowledgements, which follow the commit ACK on the same connection. False when
        that connection is gone (the caller decides what to do with the payload)."""
        for conn in self._connections:
            if conn.peer.address == address and conn.accepting_pushes():
                conn.push(payload)
                return True
        return False

    def _notify(self, opened: bool, peer: Peer) -> None:
        if self.on_connection is None:
            return
        try:
            self.on_connection(opened, peer)
        except Exception:
            log.exception("on_connection callback failed", extra={"channel": self.name})


_END = object()


class _Unsolicited:
    """A frame the engine pushes (not a reply to a frame): outside in-flight accounting."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class _Connection:
    """One accepted socket: a reader task that decodes and dispatches, a writer task that
    awaits replies in order. Lives exactly as long as the socket."""

    def __init__(
        self,
        server: MLLPServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection_id: int,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.connection_id = connection_id
        peername = writer.get_extra_info("peername") or ("?", 0)
        self.peer = Peer(str(peername[0]), int(peername[1]), None, connection_id)
        self.task: asyncio.Task[Any] | None = None
        self._decoder = FrameDecoder(server.max_frame_bytes)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._slots = asyncio.Semaphore(server.max_in_flight)
        self._in_flight = 0
        self._broken = False  # no more replies may be written on this socket
        self._stopping = False
        self._last_activity = asyncio.get_running_loop().time()
        self._read_task: asyncio.Task[None] | None = None
        self._write_task: asyncio.Task[None] | None = None

    def _extra(self, **fields: Any) -> dict[str, Any]:
        return {
            "channel": self.server.name,
            "peer": self.peer.address,
            "connection_id": self.connection_id,
            **fields,
        }

    async def serve(self) -> None:
        stats = self.server.stats
        stats.connections_total += 1
        stats.connections_open += 1
        admitted = False
        try:
            if self.server.keepalive:
                enable_keepalive(self.writer.get_extra_info("socket"))
            if self.server.ssl_context is not None and not await self._secure():
                return
            admitted = True
            log.info("connection opened", extra=self._extra())
            self.server._notify(True, self.peer)
            self._write_task = asyncio.create_task(self._write_loop())
            self._read_task = asyncio.create_task(self._read_loop())
            await asyncio.wait([self._read_task])
            self._queue.put_nowait(_END)
            await asyncio.wait([self._write_task])
        finally:
            for task in (self._read_task, self._write_task):
                if task is not None and not task.done():
                    task.cancel()
            self._discard_queued()
            self.writer.close()
            stats.connections_open -= 1
            if admitted:
                log.info("connection closed", extra=self._extra())
                self.server._notify(False, self.peer)

    def accepting_pushes(self) -> bool:
        return self._write_task is not None and not self._broken and not self._stopping

    def push(self, payload: bytes) -> None:
        self._queue.put_nowait(_Unsolicited(payload))

    def stop_reading(self) -> None:
        """Server shutdown: take no new frames, but let queued replies be written."""
        self._stopping = True
        if self._read_task is not None:
            self._read_task.cancel()
        elif self._write_task is None:
            # Still in the TLS handshake: nothing to drain.
            self.writer.transport.abort()

    def abort(self) -> None:
        """Grace period over: drop pending replies and the socket."""
        self._broken = True
        if self._write_task is not None:
            self._write_task.cancel()
        self.writer.transport.abort()

    async def _secure(self) -> bool:
        server = self.server
        assert server.ssl_context is not None
        timeout = TLS_HANDSHAKE_TIMEOUT_S
        if server.idle_timeout is not None:
            timeout = min(timeout, server.idle_timeout)
        plain_transport = self.writer.transport
        reason = None
        try:
            await self.writer.start_tls(server.ssl_context, ssl_handshake_timeout=timeout)
        except (OSError, TimeoutError, EOFError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
        except AttributeError:
            # CPython 3.11: when the connection is lost mid-handshake without an error
            # (e.g. the client hung up after rejecting our certificate), loop.start_tls
            # returns None and StreamWriter.start_tls fails on it.
            reason = "connection lost during handshake"
        if self.writer.transport is None:
            # Same cause: put the closed transport back so close() and __del__ still work.
            self.writer._transport = plain_transport  # type: ignore[attr-defined]
            reason = reason or "connection lost during handshake"
        if reason is not None:
            server.stats.tls_handshake_failed += 1
            if not self._stopping:
                log.warning("TLS handshake failed: %s", reason, extra=self._extra())
            return False
        found = peer_subject(self.writer.get_extra_info("ssl_object"))
        subject, common_name = found if found is not None else (None, None)
        self.peer = Peer(self.peer.host, self.peer.port, subject, self.connection_id)
        allowed = server.allowed_subjects
        if allowed is not None and (
            subject is None or not subject_allowed(subject, common_name, allowed)
        ):
            server.stats.tls_rejected += 1
            # The subject names an organisation, not a patient: logging it is what lets an
            # operator fix the allow-list.
            log.warning(
                "client certificate subject not allowed: %s",
                subject or "(no certificate)",
                extra=self._extra(tls_subject=subject),
            )
            return False
        return True

    async def _read(self) -> bytes:
        idle = self.server.idle_timeout
        if idle is None:
            return await self.reader.read(READ_SIZE)
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(self._last_activity + idle):
                    data = await self.reader.read(READ_SIZE)
                self._last_activity = loop.time()
                return data
            except TimeoutError:
                now = loop.time()
                if self._in_flight:
                    # Silence is expected while we owe the peer replies; the idle period
                    # restarts from now (and again when the reply is written).
                    self._last_activity = now
                    continue
                if now < self._last_activity + idle:
                    continue  # a reply was written meanwhile: the period restarted
                log.info("idle timeout after %.1f s", idle, extra=self._extra())
                return b""

    async def _read_loop(self) -> None:
        stats = self.server.stats
        decoder = self._decoder
        try:
            while True:
                try:
                    data = await self._read()
                except (OSError, EOFError) as exc:
                    log.info("connection error: %s", type(exc).__name__, extra=self._extra())
                    data = b""
                if not data:
                    break
                stats.bytes_received += len(data)
                for event in decoder.feed(data):
                    if not await self._dispatch(event):
                        return
                pending = decoder.pending()
                if pending > stats.peak_pending_bytes:
                    stats.peak_pending_bytes = pending
            for event in decoder.close():
                await self._dispatch(event)
        except asyncio.CancelledError:
            if decoder.pending():
                log.info(
                    "dropping a partial frame of %d bytes at shutdown",
                    decoder.pending(),
                    extra=self._extra(),
                )
            raise

    async def _dispatch(self, event: FrameEvent) -> bool:
        """Hand one decoded event to the handler; False stops reading this connection."""
        server = self.server
        stats = server.stats
        if isinstance(event, Frame):
            stats.frames_received += 1
            await self._acquire_slot()
            return self._start(server.handler, event.payload, self.peer)
        if isinstance(event, Junk):
            stats.junk_bytes += event.size
            log.warning(
                "ignored %d bytes outside any MLLP frame", event.size, extra=self._extra()
            )
            return True
        if isinstance(event, Oversized):
            stats.oversized_frames += 1
            what = "oversized frame"
        else:
            stats.truncated_frames += 1
            what = "truncated frame"
        log.warning(
            "%s: %d bytes (limit %d)",
            what,
            event.size,
            server.max_frame_bytes,
            extra=self._extra(size=event.size),
        )
        if server.on_oversized is None:
            return True
        await self._acquire_slot()
        return self._start(server.on_oversized, event.head, event.size, self.peer)

    async def _acquire_slot(self) -> None:
        # Backpressure: while max_in_flight replies are owed we wait here, so we stop
        # reading the socket and TCP flow control slows the sender down.
        await self._slots.acquire()
        self._in_flight += 1

    def _start(self, fn: Callable[..., Awaitable[bytes | None]], *args: Any) -> bool:
        """Call the handler now (so it can start work) and queue its awaitable for the
        writer. A handler that raises still takes its place in the queue, so replies owed
        for earlier frames are written before the connection is closed."""
        try:
            awaitable = fn(*args)
        except Exception as exc:
            failed: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            self._queue.put_nowait(failed)
            return False
        self._queue.put_nowait(awaitable)
        return True

    async def _write_loop(self) -> None:
        current = asyncio.current_task()
        assert current is not None
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Unsolicited):
                if not self._broken:
                    await self._write_frame(item.payload)
                continue
            try:
                if asyncio.isfuture(item):
                    # Shielded: a forced close must not cancel work the engine owns.
                    reply = await asyncio.shield(item)
                else:
                    reply = await item
            except asyncio.CancelledError:
                if current.cancelling():
                    raise
                self._handler_failed("handler cancelled its reply", exc_info=False)
                continue
            except Exception:
                self._handler_failed("handler failed; closing the connection", exc_info=True)
                continue
            finally:
                self._in_flight -= 1
                self._slots.release()
            if reply is None or self._broken:
                continue
            await self._write_frame(reply)

    async def _write_frame(self, reply: bytes) -> None:
        try:
            data = frame(reply)
        except (ValueError, TypeError):
            self._handler_failed("handler returned an invalid reply", exc_info=True)
            return
        try:
            self.writer.write(data)
            self.server.stats.bytes_sent += len(data)
            await self.writer.drain()
            self._last_activity = asyncio.get_running_loop().time()
        except (OSError, EOFError) as exc:
            log.info("write failed: %s", type(exc).__name__, extra=self._extra())
            self._break()

    def _handler_failed(self, message: str, *, exc_info: bool) -> None:
        self.server.stats.handler_errors += 1
        log.error(message, exc_info=exc_info, extra=self._extra())
        self._break()

    def _break(self) -> None:
        """Stop reading and writing; replies still queued are awaited but not sent, so the
        handler finishes what it started."""
        self._broken = True
        if self._read_task is not None and not self._read_task.done():
            self._read_task.cancel()
        self.writer.close()

    def _discard_queued(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _END:
                continue
            if asyncio.iscoroutine(item):
                item.close()  # never started: nothing to cancel, just avoid the warning
            elif asyncio.isfuture(item):
                item.add_done_callback(_consume_result)


def _consume_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
