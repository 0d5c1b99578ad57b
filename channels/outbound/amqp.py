"""AMQP destination: publish a JSON event to an exchange, persistent, with publisher confirms.

`message_id` is the delivery's idempotency key, so a consumer can drop the rare duplicate
that at-least-once publishing produces after a crash between confirm and commit.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kombu import Connection, Exchange, Producer

from .base import OutboundItem, Outcome


class AMQPDestination:
    type = "amqp"

    def __init__(self, name: str, cfg: dict[str, Any]) -> None:
        self.name = name
        self.url = cfg.get("url") or "amqp://guest:guest@127.0.0.1:5672//"
        self.exchange = Exchange(cfg["exchange"], type=cfg.get("exchange_type", "topic"),
                                 durable=True)
        self.routing_key = cfg.get("routing_key", "parcours.{message_type}.{trigger_event}")
        self._conn: Connection | None = None
        self._producer: Producer | None = None
        self._lock = asyncio.Lock()

    def _publish(self, item: OutboundItem) -> None:
        if self._conn is None:
            self._conn = Connection(self.url, transport_options={"confirm_publish": True},
                                    connect_timeout=5)
            self._producer = Producer(self._conn.channel(), exchange=self.exchange)
            self.exchange.declare(channel=self._producer.channel)
        assert self._producer is not None
        h = item.headers
        if item.content_type == "application/json":
            body: Any = json.loads(item.payload)
        else:
            body = {"message_id": item.message_id, "route": item.route,
                    "content_type": item.content_type,
                    "message": item.payload.decode("utf-8", "replace")}
        key = self.routing_key.format(message_type=h.get("message_type", ""),
                                      trigger_event=h.get("trigger_event", ""),
                                      channel=h.get("channel", ""))
        self._producer.publish(body, routing_key=key, serializer="json", delivery_mode=2,
                               message_id=item.idempotency_key, retry=False)

    async def send(self, item: OutboundItem) -> Outcome:
        async with self._lock:
            try:
                await asyncio.to_thread(self._publish, item)
            except Exception as exc:  # broker down, channel closed, confirm nack
                self._reset()
                return Outcome.retry(f"publish failed: {type(exc).__name__}: {exc}")
        return Outcome.delivered(response=f"published to {self.exchange.name}")

    def _reset(self) -> None:
        try:
            if self._conn is not None:
                self._conn.release()
        except Exception:
            pass
        self._conn, self._producer = None, None

    async def close(self) -> None:
        self._reset()
