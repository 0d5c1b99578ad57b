"""HTTP destination: POST JSON or the raw message. 2xx delivered; 5xx, 408, 429 and network
errors retried; other 4xx dead-lettered (the receiver says the request itself is wrong).

`window` requests may be in flight at once, one per patient (`send_windowed`); each carries
its Idempotency-Key so a receiver applies a re-sent one once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from .base import OutboundItem, Outcome, send_windowed


class HTTPDestination:
    type = "http"

    def __init__(self, name: str, cfg: dict[str, Any]) -> None:
        self.name = name
        self.url = cfg["url"]
        self.format = cfg.get("format", "json")
        self.headers = dict(cfg.get("headers") or {})
        tls = cfg.get("tls") or {}
        verify: Any = tls.get("ca") or True
        cert = (tls["cert"], tls["key"]) if tls.get("cert") and tls.get("key") else None
        self.window = int(cfg.get("window", 1))
        self.default_batch_size = self.window  # what a killed engine may re-send
        self.client = httpx.AsyncClient(
            timeout=float(cfg.get("timeout", 30.0)), verify=verify, cert=cert,
            limits=httpx.Limits(max_connections=max(self.window, 10)))

    async def send_batch(self, items: Sequence[OutboundItem]) -> list[Outcome | None]:
        return await send_windowed(self.send, items, self.window)

    async def send(self, item: OutboundItem) -> Outcome:
        headers = {
            **self.headers,
            "Content-Type": item.content_type if self.format == "raw" or
            item.content_type == "application/json" else "application/json",
            "Idempotency-Key": item.idempotency_key,
            "X-Parcours-Message-Id": str(item.message_id),
            "X-Parcours-Delivery-Id": str(item.delivery_id),
        }
        body = item.payload
        if self.format == "json" and item.content_type != "application/json":
            import json

            body = json.dumps({
                "message_id": item.message_id,
                "route": item.route,
                "content_type": item.content_type,
                "message": item.payload.decode("utf-8", "replace"),
            }).encode()
        try:
            r = await self.client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return Outcome.retry("timeout")
        except httpx.HTTPError as exc:
            return Outcome.retry(f"{type(exc).__name__}: {exc}")
        response = f"HTTP {r.status_code}"
        if 200 <= r.status_code < 300:
            return Outcome.delivered(response=response)
        if r.status_code >= 500 or r.status_code in (408, 429):
            return Outcome.retry(f"receiver answered HTTP {r.status_code}", response)
        return Outcome.dead(f"receiver refused with HTTP {r.status_code}: {r.text[:200]}",
                            response)

    async def close(self) -> None:
        await self.client.aclose()
