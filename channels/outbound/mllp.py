"""MLLP destination: send, wait for the ACK, match MSA-2 to MSH-10, apply on_ae / on_ar.

`window` connections carry up to that many messages at once, one unanswered message per
connection: the HL7 transport's original exchange (send, then wait for the ACK) holds on
each, and receivers that answer out of order across connections are fine because every
reply is matched to its message by MSA-2.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from connectors.mllp.client import MLLPClient
from connectors.mllp.errors import MLLPError
from connectors.mllp.tls import client_ssl_context
from transformers.hl7.ack import read_ack
from transformers.hl7.header import HeaderError, read_header

from .base import OutboundItem, Outcome, send_windowed

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
        self.window = int(cfg.get("window", 1))
        # A batch is the window: a killed engine re-sends at most the messages in flight.
        self.default_batch_size = self.window
        self._clients = [MLLPClient(
            cfg["host"], int(cfg["port"]), ssl_context=ctx,
            ack_timeout=float(cfg.get("timeout", 30.0)), connect_timeout=10.0,
        ) for _ in range(self.window)]
        self._idle: asyncio.Queue[MLLPClient] = asyncio.Queue()
        for client in self._clients:
            self._idle.put_nowait(client)

    async def send_batch(self, items: Sequence[OutboundItem]) -> list[Outcome | None]:
        return await send_windowed(self.send, items, self.window)

    async def send(self, item: OutboundItem) -> Outcome:
        try:
            control_id = read_header(item.payload).control_id
        except HeaderError:
            return Outcome.dead("payload is not an HL7 v2 message; an MLLP destination needs one")
        client = await self._idle.get()  # one message in flight per connection
        try:
            return await self._exchange(client, item.payload, control_id)
        finally:
            self._idle.put_nowait(client)

    async def _exchange(self, client: MLLPClient, payload: bytes, control_id: str) -> Outcome:
        try:
            reply = await client.send(payload)
        except MLLPError as exc:
            return Outcome.retry(f"{type(exc).__name__}: {exc}")
        try:
            code, ack_control_id, text = read_ack(reply)
        except ValueError as exc:
            await client.close()
            return Outcome.retry(f"reply is not an ACK: {exc}")
        response = f"{code} {text}".strip()
        if ack_control_id != control_id:
            # A stale reply from an earlier, timed-out exchange: the stream cannot be trusted.
            await client.close()
            return Outcome.retry(
                f"ACK MSA-2 {ack_control_id!r} does not match MSH-10 {control_id!r}", response
            )
        if code in ("AA", "CA"):
            return Outcome.delivered(response=response)
        if code in ("AE", "CE"):
            return _POLICY[self.on_ae](f"receiver answered {code}: {text}", response)
        return _POLICY[self.on_ar](f"receiver answered {code}: {text}", response)

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
