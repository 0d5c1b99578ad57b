"""MLLP transport: framing, listener (inbound endpoint), sender (outbound endpoint), TLS.

Knows nothing of the engine; the engine composes it. See docs/mllp.md.
"""

from connectors.mllp.client import MLLPClient
from connectors.mllp.errors import (
    MLLPConnectionError,
    MLLPError,
    MLLPProtocolError,
    MLLPTimeout,
)
from connectors.mllp.framing import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    Frame,
    FrameDecoder,
    FrameEvent,
    Junk,
    Oversized,
    Truncated,
    frame,
)
from connectors.mllp.server import (
    ConnectionCallback,
    Handler,
    MLLPServer,
    OversizedHandler,
    Peer,
    ServerStats,
)
from connectors.mllp.tls import client_ssl_context, server_ssl_context

__all__ = [
    "CARRIAGE_RETURN",
    "END_BLOCK",
    "START_BLOCK",
    "ConnectionCallback",
    "Frame",
    "FrameDecoder",
    "FrameEvent",
    "Handler",
    "Junk",
    "MLLPClient",
    "MLLPConnectionError",
    "MLLPError",
    "MLLPProtocolError",
    "MLLPServer",
    "MLLPTimeout",
    "OversizedHandler",
    "Oversized",
    "Peer",
    "ServerStats",
    "Truncated",
    "client_ssl_context",
    "frame",
    "server_ssl_context",
]
