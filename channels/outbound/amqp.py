"""AMQP destination: publish a JSON event to an exchange, persistent, with publisher confirms.

`message_id` is the delivery's idempotency key, so a consumer can drop the rare duplicate
that at-least-once publishing produces after a crash between confirm and commit.

A batch is published as one window: every message of it goes out on the channel, then the
broker's confirms are awaited together (RabbitMQ publisher confirms, `multiple` acks), so the
round trip is paid once per window rather than once per message. Per-patient order holds
because the broker enqueues one channel's publishes in the order they were sent; an item whose
confirm did not arrive (connection lost) is retried, a duplicate the consumer drops by
`message_id`. A broker *nack* (its own internal error) of one item while later items of the
same patient were confirmed can reorder them: `window: 1` gives strict order at one round
trip per message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from kombu import Connection, Exchange, Producer

from .base import OutboundItem, Outcome, order_key


class AMQPDestination:
    type = "amqp"

    def __init__(self, name: str, cfg: dict[str, Any]) -> None:
        self.name = name
        self.url = cfg.get("url") or "amqp://guest:guest@127.0.0.1:5672//"
        self.exchange = Exchange(cfg["exchange"], type=cfg.get("exchange_type", "topic"),
                                 durable=True)
        self.routing_key = cfg.get("routing_key", "parcours.{message_type}.{trigger_event}")
        self.window = int(cfg.get("window", 32))
        self.default_batch_size = self.window  # what a killed engine may publish again
        self.timeout = float(cfg.get("timeout", 30.0))
        self._conn: Connection | None = None
        self._producer: Producer | None = None
        self._outstanding: set[int] = set()  # tags published, not yet confirmed
        self._confirmed: dict[int, bool] = {}  # delivery tag → acked (True) / nacked (False)
        self._next_tag = 1
        self._lock = asyncio.Lock()

    def _connect(self) -> Producer:
        if self._producer is None:
            self._conn = Connection(self.url, connect_timeout=5)
            channel = self._conn.channel()
            channel.confirm_select()  # confirm mode: tags count publishes from 1 on
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            self._next_tag = 1
            self._outstanding, self._confirmed = set(), {}
            self._producer = Producer(channel, exchange=self.exchange)
            self.exchange.declare(channel=channel)
        return self._producer

    def _settle(self, tag: int, multiple: bool, acked: bool) -> None:
        # Only this window's tags are looked at: a long-lived channel's tags keep growing.
        for t in [t for t in self._outstanding if t == tag or (multiple and t < tag)]:
            self._outstanding.discard(t)
            self._confirmed[t] = acked

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, True)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, False)

    def _body(self, item: OutboundItem) -> tuple[Any, str]:
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
        return body, key

    def _publish_window(self, items: Sequence[OutboundItem]) -> list[Outcome | None]:
        """Blocking (run in a thread): publish all, then wait for their confirms."""
        tags: list[int] = []
        error: Exception | None = None
        try:
            producer = self._connect()
            for item in items:
                body, key = self._body(item)
                producer.publish(body, routing_key=key, serializer="json", delivery_mode=2,
                                 message_id=item.idempotency_key, retry=False)
                tags.append(self._next_tag)
                self._outstanding.add(self._next_tag)
                self._next_tag += 1
            deadline = time.monotonic() + self.timeout
            assert self._conn is not None
            while self._outstanding:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no confirm from the broker within {self.timeout:g} s")
                self._conn.drain_events(timeout=remaining)
        except Exception as exc:  # broker down, channel closed (unknown exchange), timeout
            error = exc
        out: list[Outcome | None] = []
        stopped: set[str] = set()
        for i, item in enumerate(items):
            key = order_key(item)
            acked = self._confirmed.get(tags[i]) if i < len(tags) else None
            if acked:
                out.append(Outcome.delivered(response=f"published to {self.exchange.name}"))
            elif key in stopped:
                out.append(None)
            else:
                stopped.add(key)
                why = (f"publish failed: {type(error).__name__}: {error}" if acked is None
                       and error is not None else "the broker refused the message (nack)")
                out.append(Outcome.retry(why))
        self._confirmed.clear()
        if error is not None:
            self._reset()
        return out

    async def send_batch(self, items: Sequence[OutboundItem]) -> list[Outcome | None]:
        async with self._lock:
            return await asyncio.to_thread(self._publish_window, items)

    async def send(self, item: OutboundItem) -> Outcome:
        [outcome] = await self.send_batch([item])
        assert outcome is not None
        return outcome

    def _reset(self) -> None:
        try:
            if self._conn is not None:
                self._conn.release()
        except Exception:
            pass
        self._conn, self._producer = None, None

    async def close(self) -> None:
        self._reset()
