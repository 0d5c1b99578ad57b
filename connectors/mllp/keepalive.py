"""TCP keepalive for long-lived MLLP connections.

HL7 feeds keep one connection open for days and may stay silent for hours; firewalls and
NAT boxes in between drop such flows without telling either end. Kernel keepalive probes
keep the flow alive and let a dead peer be detected without sending anything at the HL7
level (MLLP itself has no heartbeat).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

log = logging.getLogger("parcours.mllp")

KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_COUNT = 5


def enable_keepalive(
    sock: Any,
    *,
    idle: int = KEEPALIVE_IDLE_S,
    interval: int = KEEPALIVE_INTERVAL_S,
    count: int = KEEPALIVE_COUNT,
) -> None:
    """Turn on SO_KEEPALIVE and, where the platform has them, the per-socket timers.

    ``sock`` is a socket or asyncio's TransportSocket wrapper (both have ``setsockopt``).
    Failures are logged and ignored: keepalive is an optimisation, not a reason to refuse
    a connection.
    """
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", idle),
            ("TCP_KEEPINTVL", interval),
            ("TCP_KEEPCNT", count),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as exc:
        log.debug("could not set TCP keepalive: %s", exc)
