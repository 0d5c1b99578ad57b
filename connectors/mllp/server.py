"""MLLP listener (inbound endpoint): frames in, handler replies out, in order.

The listener is a transport: it knows framing, sockets, TLS and flow control, and nothing of
the message store or the router. The consumer that owns the policy (when to ACK, what to
answer) is the ``handler`` it is given.

Handler contract, and why it looks like this
--------------------------------------------
``handler(payload, peer)`` is called *synchronously*, in frame order, as soon as a frame is
complete. It returns an awaitable; the connection writes each non-None reply as a frame
*in order*, as soon as the awaitable at the head of its queue is done. The HL7 MLLP
transport spec (HL7 v2.5.1 Appendix C / MLLP Release 2) requires the acknowledgements on a
connection to come back in the order the messages were sent, which that queue guarantees
whatever the handler does. The synchronous call lets the engine start work for frame N+1
(e.g. queue it for a batched commit) before frame N is acknowledged: a handler that returns
a Future or Task gets pipelining; a handler written as ``async def`` returns a coroutine that
is only started when it reaches the head of the queue, i.e. one message at a time, which is
the safe default.

``None`` as a reply sends nothing (HL7 accept-acknowledgment type NE).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from connectors.mllp.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    Frame,
    FrameDecoder,
    FrameEvent,
    Junk,
    Oversized,
    Truncated,
    frame,
)
from connectors.mllp.keepalive import enable_keepalive
from connectors.mllp.limits import ListenerLimits, LogOncePerSecond, SharedLimits
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
#: ``on_cut(head, size, reason, peer)``: a frame that was not kept whole, with why:
#: "oversized", "truncated" (a new start block came first, or end of stream), "idle_timeout",
#: "frame_timeout" (not complete within the frame timeout), "over_budget" (the process's
#: budget for unfinished frames was spent).
CutHandler: TypeAlias = Callable[[bytes, int, str, Peer], Awaitable[bytes | None]]
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
    connections_refused: int = 0  # over max_connections (listener, process) or per peer
    frame_timeouts: int = 0  # frames not complete within frame_timeout
    frames_cut: int = 0  # frames cut to their head: the unfinished-frame budget was spent


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
        limits: ListenerLimits | None = None,
        shared: SharedLimits | None = None,
        on_cut: CutHandler | None = None,
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
        self.limits = limits if limits is not None else ListenerLimits()
        self.shared = shared
        self.on_cut = on_cut
        self.refusals = LogOncePerSecond(log)
        self._per_peer: dict[str, int] = {}
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
        # TLS is negotiated per connection in _Connection (loop.start_tls), not by
        # create_server(ssl=...): that way a failed handshake is counted and logged with the
        # peer address instead of disappearing into asyncio's debug log.
        loop = asyncio.get_running_loop()
        install_accept_error_handler(loop)
        self._server = await loop.create_server(
            self._accept, self.host, self._port, backlog=1024
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
        tasks = [conn.closed for conn in connections]
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

    def _accept(self) -> _Connection:
        self._next_id += 1
        return _Connection(self, self._next_id)

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

    def _refusal(self, host: str) -> str | None:
        """Why a new connection from `host` is refused, or None to take it."""
        limits = self.limits
        if limits.max_connections is not None and len(self._connections) >= (
                limits.max_connections):
            return "max_connections"
        per_peer = limits.max_connections_per_peer
        if per_peer is not None and self._per_peer.get(host, 0) >= per_peer:
            return "max_connections_per_peer"
        if self.shared is not None and not self.shared.take_connection():
            return "max_connections_total"
        return None

    def _notify(self, opened: bool, peer: Peer) -> None:
        if self.on_connection is None:
            return
        try:
            self.on_connection(opened, peer)
        except Exception:
            log.exception("on_connection callback failed", extra={"channel": self.name})


class _Unsolicited:
    """A frame the engine pushes (not a reply to a frame): outside in-flight accounting."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class _Connection(asyncio.Protocol):
    """One accepted socket, as an asyncio protocol.

    A protocol rather than a stream reader plus reader and writer tasks: on the intake path
    every frame used to cost a read await, a semaphore, a queue hand-off, a shielded await
    and a drain: ~55 µs more event-loop CPU per message with 8 busy connections
    (docs/architecture.md, docs/benchmarks.md). Here a frame is dispatched from
    ``data_received`` and its reply is written from the done-callback of the awaitable the
    handler returned; the deque
    ``_owed`` keeps replies in frame order (HL7 v2.5.1 Appendix C: ACKs come back in the
    order the messages were sent).
    """

    def __init__(self, server: MLLPServer, connection_id: int) -> None:
        self.server = server
        self.connection_id = connection_id
        self.loop = asyncio.get_running_loop()
        self.peer = Peer("?", 0, None, connection_id)
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._decoder = FrameDecoder(server.max_frame_bytes)
        self._owed: deque[Any] = deque()  # awaitables and _Unsolicited, in write order
        self._waiting: Any = None  # the head awaitable we hold a done-callback on
        # Decoded, not dispatched (backpressure); its bytes count in the shared budget.
        self._backlog = _Backlog(server.shared)
        self._in_flight = 0
        self._admitted = False
        self._reading = True  # we want data (not paused for backpressure or shutdown)
        self._eof = False  # the peer sent everything it will send (EOF, idle timeout)
        self._read_done = False  # handler failed or shutdown: no more frames at all
        self._pumping = False
        self._repump = False
        self._write_paused = False  # the transport's buffer is full (pause_writing)
        self._broken = False  # no more replies may be written on this socket
        self._stopping = False
        self._finished = False
        self._last_activity = self.loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._early: list[bytes] = []  # data received before the connection was admitted
        self._counted = False  # holds a place in the listener's, the peer's, the process's
        self._reserved = 0  # bytes of the shared unfinished-frame budget this one holds
        self._frame_since: float | None = None  # when the frame in progress started
        self._frame_timer: asyncio.TimerHandle | None = None
        # Lingering close: we stopped listening while the peer may still be writing (its
        # frame was over the memory budget). Closing a socket with unread bytes makes the
        # kernel send a reset, which can destroy the AR before the peer reads it; so we
        # answer, half-close, and discard what still comes until EOF or LINGER_S.
        self._lingering = False
        self._peer_eof = False
        self._linger_timer: asyncio.TimerHandle | None = None

    def _extra(self, **fields: Any) -> dict[str, Any]:
        return {
            "channel": self.server.name,
            "peer": self.peer.address,
            "connection_id": self.connection_id,
            **fields,
        }

    # -- life cycle --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        server = self.server
        self.transport = transport
        peername = transport.get_extra_info("peername") or ("?", 0)
        self.peer = Peer(str(peername[0]), int(peername[1]), None, self.connection_id)
        refused = None if server._closing else server._refusal(self.peer.host)
        if refused is not None:
            # Closed before it costs anything but the accept: no timers, no decoder use,
            # one log line a second per reason whatever the flood (never the peer's data).
            self._finished = True
            server.stats.connections_refused += 1
            if server.shared is not None:
                server.shared.refused[refused] += 1
            server.refusals.warning(
                refused, "connection refused: %s", refused,
                extra={"channel": server.name, "peer": self.peer.host,
                       "open": len(server._connections)})
            transport.abort()
            self.closed.set_result(None)
            return
        self._counted = True
        server._per_peer[self.peer.host] = server._per_peer.get(self.peer.host, 0) + 1
        server._connections.add(self)
        server.stats.connections_total += 1
        server.stats.connections_open += 1
        if server._closing:
            transport.abort()
            return
        if server.keepalive:
            enable_keepalive(transport.get_extra_info("socket"))
        if server.ssl_context is not None:
            transport.pause_reading()
            self._handshake = self.loop.create_task(self._secure(transport))
            return
        self._admit()

    def _admit(self) -> None:
        self._admitted = True
        log.info("connection opened", extra=self._extra())
        self.server._notify(True, self.peer)
        if self.server.idle_timeout is not None:
            self._last_activity = self.loop.time()
            self._idle_timer = self.loop.call_at(
                self._last_activity + self.server.idle_timeout, self._check_idle
            )
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self._stopping:
            log.info("connection error: %s", type(exc).__name__, extra=self._extra())
        self._finish()

    def _finish(self) -> None:
        """Once per connection, whether it ended normally, failed its TLS handshake or was
        aborted: counters, callbacks, and the replies nobody will read."""
        if self._finished:
            return
        self._finished = True
        self._broken = True
        self._read_done = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._frame_timer is not None:
            self._frame_timer.cancel()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._release_reserved()
        if self._decoder.pending() and self._stopping:
            log.info(
                "dropping a partial frame of %d bytes at shutdown",
                self._decoder.pending(),
                extra=self._extra(),
            )
        self._backlog.clear()
        self._discard_owed()
        server = self.server
        server._connections.discard(self)
        server.stats.connections_open -= 1
        if self._counted:
            self._counted = False
            host = self.peer.host
            left = server._per_peer.get(host, 1) - 1
            if left > 0:
                server._per_peer[host] = left
            else:
                server._per_peer.pop(host, None)
            if server.shared is not None:
                server.shared.release_connection()
        if self._admitted:
            log.info("connection closed", extra=self._extra())
            server._notify(False, self.peer)
        if not self.closed.done():
            self.closed.set_result(None)

    def accepting_pushes(self) -> bool:
        return self._admitted and not self._broken and not self._stopping

    def push(self, payload: bytes) -> None:
        self._owed.append(_Unsolicited(payload))
        self._pump()

    def stop_reading(self) -> None:
        """Server shutdown: take no new frames, but let owed replies be written."""
        self._stopping = True
        if self._handshake is not None and not self._admitted:
            # Still in the TLS handshake: nothing to drain.
            if self.transport is not None:
                self.transport.abort()
            self._handshake.cancel()
            return
        self._end_reading()

    def abort(self) -> None:
        """Grace period over: drop owed replies and the socket."""
        self._broken = True
        if self.transport is not None:
            self.transport.abort()

    # -- TLS ---------------------------------------------------------------------------------

    async def _secure(self, plain: asyncio.Transport) -> None:
        server = self.server
        assert server.ssl_context is not None
        timeout = TLS_HANDSHAKE_TIMEOUT_S
        if server.idle_timeout is not None:
            timeout = min(timeout, server.idle_timeout)
        reason = None
        secured: asyncio.Transport | None = None
        try:
            secured = await self.loop.start_tls(
                plain, self, server.ssl_context, server_side=True,
                ssl_handshake_timeout=timeout,
            )
        except (OSError, TimeoutError, EOFError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
        except asyncio.CancelledError:
            reason = "server closing"
        if secured is None and reason is None:
            # CPython 3.11: a peer that hangs up mid-handshake without an error (e.g. after
            # rejecting our certificate) leaves start_tls without a transport.
            reason = "connection lost during handshake"
        if reason is not None or secured is None:
            server.stats.tls_handshake_failed += 1
            if not self._stopping:
                log.warning("TLS handshake failed: %s", reason, extra=self._extra())
            plain.abort()
            self._finish()  # the SSL layer never reports connection_lost for this protocol
            return
        self.transport = secured
        found = peer_subject(secured.get_extra_info("ssl_object"))
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
            secured.abort()
            self._finish()
            return
        if self._finished or self._stopping:
            secured.abort()
            return
        self._admit()

    # -- reading -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._read_done or self._eof:
            return
        if not self._admitted:
            # TLS: application data can arrive in the same callback that completes the
            # handshake, before the client's certificate subject has been checked.
            self._early.append(data)
            return
        server = self.server
        stats = server.stats
        stats.bytes_received += len(data)
        self._last_activity = self.loop.time()
        events = self._decoder.feed(data)
        pending = self._decoder.pending()
        if pending > stats.peak_pending_bytes:
            stats.peak_pending_bytes = pending
        fits = True
        if server.shared is not None and pending != self._reserved:
            fits = self._account(pending)
        if server.limits.frame_timeout is not None:
            self._watch_frame(bool(events))
        self._take(events)
        if not fits:
            self._input_ended("over_budget")

    def _take(self, events: list[FrameEvent]) -> None:
        server = self.server
        if self._backlog:
            self._backlog.extend(events)
            return
        for i, event in enumerate(events):
            if self._in_flight >= server.max_in_flight and isinstance(event, _NEEDS_SLOT):
                # Backpressure: while max_in_flight replies are owed, stop reading the socket
                # so TCP flow control slows the sender down; what this read already held
                # waits here and is dispatched as replies go out.
                self._backlog.extend(events[i:])
                self._pause_reading()
                return
            if not self._dispatch(event):
                return

    def _account(self, pending: int) -> bool:
        """Keep this connection's share of the unfinished-frame budget equal to what its
        decoder holds. Over budget, the frame is cut to its head; False when even the head
        does not fit (the connection's input is then ended: the frame is answered as cut)."""
        shared = self.server.shared
        assert shared is not None
        if pending <= self._reserved or shared.take_bytes(pending - self._reserved):
            if pending < self._reserved:
                shared.release_bytes(self._reserved - pending)
            self._reserved = pending
            return True
        self._decoder.cut()
        shared.frames_cut += 1
        self.server.stats.frames_cut += 1
        self.server.refusals.warning(
            "over_budget", "unfinished frames hold %d bytes (budget %d): a frame is cut to "
            "its head and will be answered AR", shared.pending, shared.pending_frame_bytes,
            extra=self._extra())
        pending = self._decoder.pending()
        if pending <= self._reserved or shared.take_bytes(pending - self._reserved):
            if pending < self._reserved:
                shared.release_bytes(self._reserved - pending)
            self._reserved = pending
            return True
        return False

    def _release_reserved(self) -> None:
        if self._reserved and self.server.shared is not None:
            self.server.shared.release_bytes(self._reserved)
        self._reserved = 0

    def _watch_frame(self, ended_some: bool) -> None:
        """Frame-progress timeout: a frame must end within frame_timeout of its start block,
        however slowly its bytes keep coming (the idle timeout only counts silence)."""
        if not self._decoder.in_frame():
            self._frame_since = None
            return
        if ended_some or self._frame_since is None:
            self._frame_since = self.loop.time()
        if self._frame_timer is None:
            timeout = self.server.limits.frame_timeout
            assert timeout is not None
            self._frame_timer = self.loop.call_at(self._frame_since + timeout,
                                                  self._check_frame)

    def _check_frame(self) -> None:
        self._frame_timer = None
        since = self._frame_since
        timeout = self.server.limits.frame_timeout
        if self._finished or self._eof or self._read_done or since is None or timeout is None:
            return
        now = self.loop.time()
        if not self._reading:
            # We stopped reading (backpressure): the sender is not the one holding it up.
            self._frame_since = now
        elif now >= since + timeout:
            self.server.stats.frame_timeouts += 1
            self.server.refusals.warning(
                "frame_timeout", "frame not complete %.0f s after its start block: closing "
                "the connection", timeout, extra=self._extra())
            self._input_ended("frame_timeout")
            return
        self._frame_timer = self.loop.call_at(self._frame_since + timeout, self._check_frame)

    def eof_received(self) -> bool:
        if not self._admitted:
            return False
        self._peer_eof = True
        if self._linger_timer is not None:
            return False  # answered and half-closed already: the transport closes now
        self._input_ended()
        # Keep the socket open for the replies still owed (a sender may half-close after
        # its last message); _pump closes it once they are written. TLS cannot half-close.
        return self._handshake is None

    def _input_ended(self, reason: str = "truncated") -> None:
        """The peer finished sending (EOF), or we stop listening to it (idle or frame
        timeout, memory budget): a frame left open is reported as cut with that reason,
        what is decoded is still dispatched, then the connection closes."""
        if self._eof or self._read_done:
            return
        self._eof = True
        self._backlog.extend(_Ended(e, reason) for e in self._decoder.close()
                             if isinstance(e, Truncated))
        self._release_reserved()
        if reason in _LINGER_REASONS and not self._peer_eof:
            self._lingering = True
            self._resume_reading()  # data_received discards what comes from now on
        elif self.transport is not None and not self.transport.is_closing():
            self._pause_reading()
        self._pump()

    def _dispatch(self, event: FrameEvent) -> bool:
        """Hand one decoded event to the handler; False stops reading this connection."""
        server = self.server
        stats = server.stats
        if type(event) is Frame:
            stats.frames_received += 1
            return self._start(server.handler, event.payload, self.peer)
        if isinstance(event, Junk):
            stats.junk_bytes += event.size
            server.refusals.warning(
                "junk", "ignored %d bytes outside any MLLP frame", event.size,
                extra=self._extra())
            return True
        reason = "truncated"
        if isinstance(event, _Ended):
            event, reason = event.event, event.reason
        assert isinstance(event, Oversized | Truncated)
        if isinstance(event, Oversized):
            reason = "over_budget" if event.cut else "oversized"
            stats.oversized_frames += 1
        else:
            stats.truncated_frames += 1
        server.refusals.warning(
            reason, "frame not kept whole (%s): %d bytes (limit %d)", reason, event.size,
            server.max_frame_bytes, extra=self._extra(size=event.size))
        if server.on_cut is not None:
            return self._start(server.on_cut, event.head, event.size, reason, self.peer)
        if server.on_oversized is None:
            return True
        return self._start(server.on_oversized, event.head, event.size, self.peer)

    def _start(self, fn: Callable[..., Awaitable[bytes | None]], *args: Any) -> bool:
        """Call the handler now (so it can start work) and owe its reply. A handler that
        raises still takes its place, so replies owed for earlier frames are written before
        the connection is closed."""
        self._in_flight += 1
        try:
            awaitable = fn(*args)
        except Exception as exc:
            failed: asyncio.Future[bytes | None] = self.loop.create_future()
            failed.set_exception(exc)
            self._owed.append(failed)
            self._end_reading()
            self._pump()
            return False
        self._owed.append(awaitable)
        if len(self._owed) == 1:
            self._pump()
        return True

    def _drain_backlog(self) -> None:
        backlog = self._backlog
        while backlog and not self._read_done:
            if self._in_flight >= self.server.max_in_flight and isinstance(
                backlog[0], _NEEDS_SLOT
            ):
                return
            if not self._dispatch(backlog.popleft()):
                backlog.clear()
                return

    def _pause_reading(self) -> None:
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self._reading and not self._read_done and self.transport is not None:
            self._reading = True
            self.transport.resume_reading()

    def _end_reading(self) -> None:
        """No more frames from this connection; close it once the owed replies are out."""
        if self._read_done:
            return
        self._read_done = True
        self._backlog.clear()
        if self.transport is not None and not self.transport.is_closing():
            self._pause_reading()
        self._pump()

    def _check_idle(self) -> None:
        idle = self.server.idle_timeout
        assert idle is not None
        now = self.loop.time()
        if self._finished:
            return
        if self._in_flight or self._owed:
            # Silence is expected while we owe the peer replies; the idle period restarts
            # from now (and again when a reply is written).
            self._last_activity = now
        elif now >= self._last_activity + idle and not (self._read_done or self._eof):
            log.info("idle timeout after %.1f s", idle, extra=self._extra())
            self._input_ended("idle_timeout")
            return
        self._idle_timer = self.loop.call_at(self._last_activity + idle, self._check_idle)

    # -- writing -----------------------------------------------------------------------------

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._pump()

    def _pump(self, _done: Any = None) -> None:
        """Write the replies at the head of ``_owed`` that are ready, in order; dispatch
        frames held back by backpressure; then read on, or close the connection once input
        has ended and nothing is owed. Re-entrant calls (a dispatch owing a new reply) are
        folded into the running one."""
        if self._pumping:
            self._repump = True
            return
        self._pumping = True
        try:
            while True:
                self._repump = False
                self._write_ready()
                if self._finished:
                    return
                if self._backlog and not self._write_paused:
                    self._drain_backlog()
                if not self._repump:
                    break
        finally:
            self._pumping = False
        if self._read_done or (self._eof and not self._backlog):
            if not self._owed and self.transport is not None and not self.transport.is_closing():
                self._close_transport()
        elif self._in_flight < self.server.max_in_flight and not self._backlog:
            self._resume_reading()

    def _close_transport(self) -> None:
        transport = self.transport
        assert transport is not None
        if self._linger_timer is not None:
            return  # half-closed already: waiting for the peer's EOF or the linger timer
        if not self._lingering or self._peer_eof:
            transport.close()
            return
        self._broken = True
        if transport.can_write_eof():
            transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_S, transport.close)

    def _write_ready(self) -> None:
        owed = self._owed
        while owed and not self._write_paused:
            head = owed[0]
            if type(head) is _Unsolicited:
                owed.popleft()
                if not self._broken:
                    self._write_frame(head.payload)
                continue
            if asyncio.iscoroutine(head):
                # An `async def` handler runs when its turn comes: one at a time.
                head = owed[0] = self.loop.create_task(head)
            if not head.done():
                if self._waiting is not head:
                    self._waiting = head
                    head.add_done_callback(self._pump)
                return
            owed.popleft()
            self._in_flight -= 1
            if head.cancelled():
                self._handler_failed("handler cancelled its reply", exc_info=None)
                continue
            exc = head.exception()
            if exc is not None:
                self._handler_failed("handler failed; closing the connection", exc_info=exc)
                continue
            reply = head.result()
            if reply is not None and not self._broken:
                self._write_frame(reply)

    def _write_frame(self, reply: bytes) -> None:
        try:
            data = frame(reply)
        except (ValueError, TypeError):
            self._handler_failed("handler returned an invalid reply", exc_info=True)
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            self._broken = True
            return
        transport.write(data)
        self.server.stats.bytes_sent += len(data)
        self._last_activity = self.loop.time()

    def _handler_failed(self, message: str, *, exc_info: Any) -> None:
        self.server.stats.handler_errors += 1
        log.error(message, exc_info=exc_info, extra=self._extra())
        self._break()

    def _break(self) -> None:
        """Stop reading and writing; replies still owed are awaited but not sent, so the
        handler finishes what it started."""
        self._broken = True
        self._end_reading()
        if self.transport is not None:
            self.transport.close()

    def _discard_owed(self) -> None:
        while self._owed:
            item = self._owed.popleft()
            if asyncio.iscoroutine(item):
                item.close()  # never started: nothing to cancel, just avoid the warning
            elif asyncio.isfuture(item):
                item.add_done_callback(_consume_result)
        self._in_flight = 0


#: Why we stop listening to a peer that is probably still writing, so we linger before
#: closing (see ``_Connection._lingering``); idle and frame timeouts close at once: that peer
#: is silent or trickling, and its descriptor is what the limits are there to free.
_LINGER_REASONS = frozenset({"over_budget"})
#: How long a lingering connection is kept for the peer to finish writing and read its answer.
LINGER_S = 5.0


class _Ended:
    """The frame left open when we stopped reading a connection, and why."""

    __slots__ = ("event", "reason")

    def __init__(self, event: Truncated, reason: str) -> None:
        self.event = event
        self.reason = reason


# Events that become a handler call (and an owed reply); junk does not.
_NEEDS_SLOT = (Frame, Oversized, Truncated, _Ended)


def _held_bytes(event: Any) -> int:
    """The bytes a decoded event keeps in memory until it is dispatched."""
    if type(event) is Frame:
        return len(event.payload)
    if isinstance(event, _Ended):
        event = event.event
    if isinstance(event, Oversized | Truncated):
        return len(event.head)
    return 0  # Junk keeps only its size


class _Backlog:
    """Events a connection decoded but cannot dispatch yet (it owes `max_in_flight`
    replies), with their bytes counted in the process's unfinished-frame budget.

    A frame that completes leaves the decoder, so its bytes leave the decoder's share of
    the budget; when backpressure then keeps it here, the memory is still held. Without
    counting it, every connection under backpressure could hold a frame of up to the frame
    limit outside any budget.
    """

    __slots__ = ("_events", "_shared", "bytes")

    def __init__(self, shared: SharedLimits | None) -> None:
        self._events: deque[Any] = deque()
        self._shared = shared
        self.bytes = 0

    def __bool__(self) -> bool:
        return bool(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def __getitem__(self, i: int) -> Any:
        return self._events[i]

    def extend(self, events: Iterable[Any]) -> None:
        for event in events:
            n = _held_bytes(event)
            self._events.append(event)
            self.bytes += n
            if self._shared is not None:
                self._shared.hold_bytes(n)

    def popleft(self) -> Any:
        event = self._events.popleft()
        n = _held_bytes(event)
        self.bytes -= n
        if self._shared is not None:
            self._shared.release_bytes(n)
        return event

    def clear(self) -> None:
        if self._shared is not None and self.bytes:
            self._shared.release_bytes(self.bytes)
        self.bytes = 0
        self._events.clear()

_ACCEPT_OUT_OF_RESOURCE = "socket.accept() out of system resource"


def install_accept_error_handler(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio reports a failed accept (EMFILE, ENFILE, ENOBUFS, ENOMEM) to the loop's
    exception handler with a traceback, and retries a second later — once per listening
    socket. Under a flood that is a traceback storm; here it becomes one line a second,
    without traceback, and every other report goes where it went before."""
    if getattr(loop, "_parcours_accept_handler", False):
        return
    previous = loop.get_exception_handler()
    reports = LogOncePerSecond(log)

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith(_ACCEPT_OUT_OF_RESOURCE):
            exc = context.get("exception")
            reports.warning("accept_failed", "accept failed (%s): out of file descriptors or "
                            "memory; asyncio retries in 1 s", getattr(exc, "strerror", exc))
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    loop._parcours_accept_handler = True  # type: ignore[attr-defined]


def _consume_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
