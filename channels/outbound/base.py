"""The destination interface (one small interface, many transports)."""

from __future__ import annotations

from collections.abc import Sequence
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
    stopped: set[str] = set()
    out: list[Outcome | None] = []
    for item in items:
        key = order_key(item)
        if key in stopped:
            out.append(None)
            continue
        outcome = await destination.send(item)
        if outcome.kind != "delivered":
            stopped.add(key)
        out.append(outcome)
    return out
