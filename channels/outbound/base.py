"""The destination interface (one small interface, many transports)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Kind = Literal["delivered", "retry", "dead"]


@dataclass(frozen=True)
class OutboundItem:
    delivery_id: int
    message_id: int
    route: str
    destination: str
    payload: bytes
    content_type: str
    patient_key: str | None
    attempt: int  # 1 for the first try
    # Stable across retries and crashes, different for an operator's replay: the key a
    # receiver uses to apply a delivery once (HTTP Idempotency-Key, AMQP message_id, …).
    idempotency_key: str
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to. `error_code` is the receiver's own code for a refusal (the
    DMP's RegistryError codes, comma-separated), kept apart from the text so an operator can
    filter and count failures by cause (`parcours deliveries`, the deliveries table)."""

    kind: Kind
    detail: str = ""
    response: str | None = None
    error_code: str | None = None

    @classmethod
    def delivered(cls, detail: str = "", response: str | None = None) -> Outcome:
        return cls("delivered", detail, response)

    @classmethod
    def retry(cls, detail: str, response: str | None = None,
              error_code: str | None = None) -> Outcome:
        return cls("retry", detail, response, error_code)

    @classmethod
    def dead(cls, detail: str, response: str | None = None,
             error_code: str | None = None) -> Outcome:
        return cls("dead", detail, response, error_code)


class Destination(Protocol):
    name: str
    type: str

    async def send(self, item: OutboundItem) -> Outcome: ...

    async def close(self) -> None: ...


def order_key(item: OutboundItem) -> str:
    """What per-patient order is kept on: the patient, or the message alone when it has none."""
    return item.patient_key or f"message:{item.message_id}"


@runtime_checkable
class BatchDestination(Protocol):
    """A destination that takes many deliveries at once (one transaction, one round of
    fsyncs, a window of confirms).

    Contract, the same for every implementation: items come in the partition's order; the
    outcome list has one entry per item; once an item of a patient (`order_key`) is not
    delivered, the later items of that patient in the batch are not attempted and get `None`,
    so they wait behind it and per-patient order holds.
    """

    async def send_batch(self, items: Sequence[OutboundItem]) -> list[Outcome | None]: ...


async def send_in_order(destination: Destination, items: Sequence[OutboundItem]
                        ) -> list[Outcome | None]:
    """The batch contract for a destination that sends one item at a time."""
    return await send_windowed(destination.send, items, 1)


async def send_windowed(send: Callable[[OutboundItem], Awaitable[Outcome]],
                        items: Sequence[OutboundItem], window: int) -> list[Outcome | None]:
    """The batch contract with up to `window` items in flight, for transports whose receiver
    handles requests concurrently (several MLLP connections, HTTP requests).

    Each patient (`order_key`) is one lane: at most one of its items is in flight, the next
    goes only once the previous one is delivered, so per-(destination, patient) order holds
    whatever the window; different patients overlap their round trips.
    """
    if window <= 1:
        out: list[Outcome | None] = []
        stopped: set[str] = set()
        for item in items:
            key = order_key(item)
            outcome = None if key in stopped else await send(item)
            if outcome is not None and outcome.kind != "delivered":
                stopped.add(key)
            out.append(outcome)
        return out
    results: list[Outcome | None] = [None] * len(items)
    lanes: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        lanes.setdefault(order_key(item), []).append(i)
    slots = asyncio.Semaphore(window)

    async def lane(indexes: list[int]) -> None:
        for i in indexes:
            async with slots:
                outcome = await send(items[i])
            results[i] = outcome
            if outcome.kind != "delivered":
                return  # the rest of this patient's items wait behind it (None)

    await asyncio.gather(*(lane(ix) for ix in lanes.values()))
    return results
