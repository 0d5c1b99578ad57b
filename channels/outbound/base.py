"""The destination interface (one small interface, many transports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

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
