"""MLLP sender (outbound endpoint): one framed message out, the next frame back as its reply.

The HL7 MLLP transport spec (HL7 v2.5.1 Appendix C / MLLP Release 2) pairs replies with
messages by order on the connection, so the client owns one connection and serialises its
use: a reply is always the oldest unanswered message's. Any failure (timeout, reset, a reply
that is not a frame) leaves the stream in an unknown state, so the connection is dropped and
the next send opens a new one; whether and when to retry is the destination's policy, not
the transport's.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Sequence

from connectors.mllp.errors import MLLPConnectionError, MLLPProtocolError, MLLPTimeout
from connectors.mllp.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    Frame,
    FrameDecoder,
    Junk,
    Oversized,
    frame,
)
from connectors.mllp.keepalive import enable_keepalive

log = logging.getLogger("parcours.mllp")

READ_SIZE = 64 * 1024


class MLLPClient:
    """A lazily (re)connecting MLLP sender. Not safe for concurrent use from several tasks
    without its internal lock, which it takes for every operation."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        ack_timeout: float = 30.0,
        keepalive: bool = True,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        server_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.keepalive = keepalive
        self.max_frame_bytes = max_frame_bytes
        self.server_hostname = server_hostname
        self.connections_opened = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder(max_frame_bytes)
        self._replies: collections.deque[bytes] = collections.deque()
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._usable()

    async def connect(self) -> None:
        async with self._lock:
            await self._ensure_connected()

    async def send(self, payload: bytes) -> bytes:
        """Send one message and return the payload of the reply frame.

        Raises MLLPConnectionError if the message could not be written or the connection
        broke before a reply, MLLPTimeout if no reply came within ``ack_timeout``.
        """
        data = frame(payload)
        async with self._lock:
            await self._ensure_connected()
            try:
                await self._write(data)
                return await self._read_reply()
            except BaseException:
                self._drop()
                raise

    async def send_no_reply(self, payload: bytes) -> None:
        """Send one message to a peer that answers nothing (accept-ack NE).

        Replies are not read here: mixing this with ``send`` on a peer that does answer
        would pair the next ``send`` with a stale reply.
        """
        data = frame(payload)
        async with self._lock:
            await self._ensure_connected()
            try:
                await self._write(data)
            except BaseException:
                self._drop()
                raise

    async def send_many(self, payloads: Sequence[bytes], window: int = 1) -> list[bytes]:
        """Send messages keeping up to ``window`` unanswered on the wire; replies come back
        in order. Every message must get a reply. With window=1 this is plain send() in a
        loop; a larger window hides the round-trip time (benchmarks, bulk replays)."""
        if window < 1:
            raise ValueError("window must be at least 1")
        frames = [frame(p) for p in payloads]
        replies: list[bytes] = []
        async with self._lock:
            await self._ensure_connected()
            try:
                sent = 0
                while len(replies) < len(frames):
                    while sent < len(frames) and sent - len(replies) < window:
                        self._require_writer().write(frames[sent])
                        sent += 1
                    await self._drain()
                    replies.append(await self._read_reply())
            except BaseException:
                self._drop()
                raise
        return replies

    async def close(self) -> None:
        """Close the connection now. Not serialised with sends on purpose: a send waiting
        for its reply fails at once with MLLPConnectionError instead of holding shutdown
        up for ``ack_timeout``."""
        writer = self._writer
        self._drop()
        if writer is not None:
            try:
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
                pass

    async def __aenter__(self) -> MLLPClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _usable(self) -> bool:
        # A peer that closed while we were idle has fed EOF to the reader by now: reconnect
        # before writing rather than fail a message that was never sent.
        return (
            self._writer is not None
            and self._reader is not None
            and not self._writer.is_closing()
            and not self._reader.at_eof()
        )

    async def _ensure_connected(self) -> None:
        if self._usable():
            return
        self._drop()
        server_hostname = None
        if self.ssl_context is not None:
            server_hostname = self.server_hostname or self.host
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=server_hostname,
                    limit=READ_SIZE * 4,
                )
        except TimeoutError as exc:
            raise MLLPConnectionError(
                f"could not connect to {self.host}:{self.port} within {self.connect_timeout} s"
            ) from exc
        except OSError as exc:
            raise MLLPConnectionError(
                f"could not connect to {self.host}:{self.port}: {exc}"
            ) from exc
        if self.keepalive:
            enable_keepalive(writer.get_extra_info("socket"))
        self._reader, self._writer = reader, writer
        self._decoder = FrameDecoder(self.max_frame_bytes)
        self._replies.clear()
        self.connections_opened += 1
        log.debug("connected to %s:%d", self.host, self.port)

    def _require_writer(self) -> asyncio.StreamWriter:
        if self._writer is None:
            raise MLLPConnectionError("not connected")
        return self._writer

    async def _write(self, data: bytes) -> None:
        self._require_writer().write(data)
        await self._drain()

    async def _drain(self) -> None:
        try:
            await self._require_writer().drain()
        except (OSError, EOFError) as exc:
            raise MLLPConnectionError(f"send to {self.host}:{self.port} failed: {exc}") from exc

    async def _read_reply(self) -> bytes:
        if self._replies:
            return self._replies.popleft()
        reader = self._reader
        if reader is None:
            raise MLLPConnectionError("not connected")
        try:
            async with asyncio.timeout(self.ack_timeout):
                while not self._replies:
                    try:
                        data = await reader.read(READ_SIZE)
                    except (OSError, EOFError) as exc:
                        raise MLLPConnectionError(
                            f"connection to {self.host}:{self.port} broke: {exc}"
                        ) from exc
                    if not data:
                        raise MLLPConnectionError(
                            f"{self.host}:{self.port} closed the connection before replying"
                        )
                    for event in self._decoder.feed(data):
                        self._take(event)
        except TimeoutError as exc:
            raise MLLPTimeout(
                f"no reply from {self.host}:{self.port} within {self.ack_timeout} s"
            ) from exc
        return self._replies.popleft()

    def _take(self, event: object) -> None:
        if isinstance(event, Frame):
            self._replies.append(event.payload)
        elif isinstance(event, Junk):
            log.warning(
                "ignored %d bytes outside any MLLP frame from %s:%d",
                event.size,
                self.host,
                self.port,
            )
        elif isinstance(event, Oversized):
            raise MLLPProtocolError(
                f"reply of {event.size} bytes exceeds max_frame_bytes={self.max_frame_bytes}"
            )
        else:
            raise MLLPProtocolError("reply frame was cut off by a new start block")

    def _drop(self) -> None:
        writer = self._writer
        self._reader = None
        self._writer = None
        self._replies.clear()
        if writer is not None:
            writer.close()

