"""An MLLP inbound channel: an MLLPServer wired to intake, with TLS from the channel settings."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from connectors.mllp.limits import ListenerLimits, SharedLimits
from connectors.mllp.server import MLLPServer, Peer
from connectors.mllp.tls import server_ssl_context

from .types import ChannelState, Receive, ReceiveCut

log = logging.getLogger("parcours.channel.mllp")


@dataclass(frozen=True)
class MLLPSettings:
    host: str
    port: int
    max_frame_bytes: int = 16 * 1024 * 1024
    idle_timeout: float | None = 300.0
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    require_client_cert: bool = False
    allowed_subjects: tuple[str, ...] = ()
    limits: ListenerLimits = ListenerLimits()


class MLLPChannel:
    def __init__(
        self, name: str, settings: MLLPSettings, receive: Receive, receive_cut: ReceiveCut,
        shared: SharedLimits | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._receive = receive
        self._receive_cut = receive_cut
        self.state = ChannelState(name, "mllp")
        ctx: ssl.SSLContext | None = None
        if settings.tls_cert and settings.tls_key:
            ctx = server_ssl_context(
                settings.tls_cert,
                settings.tls_key,
                cafile=settings.tls_ca,
                require_client_cert=settings.require_client_cert,
            )
        self.server = MLLPServer(
            self._handle,
            host=settings.host,
            port=settings.port,
            ssl_context=ctx,
            allowed_subjects=list(settings.allowed_subjects) or None,
            max_frame_bytes=settings.max_frame_bytes,
            idle_timeout=settings.idle_timeout,
            on_cut=self._handle_cut,
            name=name,
            limits=settings.limits,
            shared=shared,
        )

    def _handle(self, payload: bytes, peer: Peer):  # type: ignore[no-untyped-def]
        return self._receive(payload, peer.address)

    def _handle_cut(self, head: bytes, size: int, reason: str, peer: Peer
                    ):  # type: ignore[no-untyped-def]
        return self._receive_cut(head, size, reason, peer.address)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        try:
            await self.server.start()
        except OSError as exc:
            self.state.state, self.state.detail = "failed", str(exc)
            raise
        self.state.state = "listening"
        self.state.detail = f"{self.settings.host}:{self.server.port}"
        log.info("channel listening", extra={"channel": self.name, "port": self.server.port})

    async def stop(self) -> None:
        await self.server.close()
        self.state.state = "stopped"
