"""Errors raised by the MLLP sender.

They tell a destination's retry policy what it needs to decide: whether the message may have
reached the receiver (``MLLPTimeout``: written, no reply in time) or certainly did not
(``MLLPConnectionError`` raised before the write, e.g. refused connection or failed TLS).
"""

from __future__ import annotations


class MLLPError(Exception):
    """Base class for every MLLP transport failure."""


class MLLPConnectionError(MLLPError):
    """The connection could not be opened, or broke while sending or awaiting the reply."""


class MLLPTimeout(MLLPError):
    """No complete reply arrived within the acknowledgement timeout."""


class MLLPProtocolError(MLLPError):
    """The peer answered with something that is not a usable frame (oversized, truncated)."""
