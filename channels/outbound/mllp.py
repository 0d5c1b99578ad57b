"""MLLP destination: send, wait for the ACK, match MSA-2 to MSH-10, apply on_ae / on_ar."""

from __future__ import annotations

import asyncio
from typing import Any

from connectors.mllp.client import MLLPClient
from connectors.mllp.errors import MLLPError
from connectors.mllp.tls import client_ssl_context
from transformers.hl7.ack import read_ack
from transformers.hl7.header import HeaderError, read_header

from .base import OutboundItem, Outcome

_POLICY = {"retry": Outcome.retry, "dead_letter": Outcome.dead, "accept": Outcome.delivered}


class MLLPDestination:
    type = "mllp"

    def __init__(self, name: str, cfg: dict[str, Any]) -> None:
        self.name = name
        self.on_ae = cfg.get("on_ae", "dead_letter")
        self.on_ar = cfg.get("on_ar", "retry")
        tls = cfg.get("tls") or {}
        ctx = None
        if tls.get("ca"):
            ctx = client_ssl_context(tls["ca"], certfile=tls.get("cert"), keyfile=tls.get("key"))
        self.client = MLLPClient(
            cfg["host"], int(cfg["port"]), ssl_context=ctx,
            ack_timeout=float(cfg.get("timeout", 30.0)), connect_timeout=10.0,
        )
        self._lock = asyncio.Lock()

    async def send(self, item: OutboundItem) -> Outcome:
        try:
            control_id = read_header(item.payload).control_id
        except HeaderError:
            return Outcome.dead("payload is not an HL7 v2 message; an MLLP destination needs one")
        async with self._lock:  # one message in flight per connection: ACKs pair by order
            try:
                reply = await self.client.send(item.payload)
            except MLLPError as exc:
                return Outcome.retry(f"{type(exc).__name__}: {exc}")
        try:
            code, ack_control_id, text = read_ack(reply)
        except ValueError as exc:
            await self.client.close()
            return Outcome.retry(f"reply is not an ACK: {exc}")
        response = f"{code} {text}".strip()
        if ack_control_id != control_id:
            # A stale reply from an earlier, timed-out exchange: the stream cannot be trusted.
            await self.client.close()
            return Outcome.retry(
                f"ACK MSA-2 {ack_control_id!r} does not match MSH-10 {control_id!r}", response
            )
        if code in ("AA", "CA"):
            return Outcome.delivered(response=response)
        if code in ("AE", "CE"):
            return _POLICY[self.on_ae](f"receiver answered {code}: {text}", response)
        return _POLICY[self.on_ar](f"receiver answered {code}: {text}", response)

    async def close(self) -> None:
        await self.client.close()
