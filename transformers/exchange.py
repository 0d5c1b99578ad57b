"""The one type every transformer takes and returns (Apache Camel's "exchange").

Contract of a transformer — built in, or a user's `module:function` named in routes.yaml:

    def my_transformer(exchange: Exchange) -> Exchange | None

- It receives the exchange produced by the previous transformer of the route (the first one
  gets the message as received) and returns an exchange: the same one modified, or a new one.
- Returning None filters the message out of this route: nothing is delivered by it.
- `body` is what destinations receive: `str` or `bytes` (sent as is), or a JSON-serialisable
  `dict`/`list` (sent as JSON). `content_type` says which.
- It must be deterministic and free of side effects: `parcours routes test` runs it on sample
  messages, and a replay runs it again. Effects belong to destinations.
- An exception fails the route for that message: its deliveries are dead-lettered with the
  error, and the operator replays the message once the transformer is fixed.
- `shared` is one dict per message, the same object in every route's copy: what the engine
  read once (`shared["parsed"]`: the text and the `Message` read from it) and what a
  transformer computed from the message as received and other routes may reuse (the LOINC
  normalisation, `transformers/lab/transformer.py`). Entries are keyed by what they were
  computed from and are read-only: a transformer that changed `text` gets its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from .hl7.reader import Message


@dataclass
class Exchange:
    message_id: int
    channel: str
    raw: bytes
    text: str
    message: Message | None  # None for non-HL7 payloads (CDA documents)
    headers: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    content_type: str = "application/hl7-v2"
    events: list[dict[str, Any]] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)

    def copy(self, **changes: Any) -> Exchange:
        """A shallow copy, so one route's chain cannot change what another route sees
        (`shared` stays the one per-message dict, on purpose)."""
        new = replace(self, **changes)
        new.headers = dict(self.headers)
        new.events = list(self.events)
        return new

    def payload(self) -> tuple[bytes, str]:
        """Bytes for the outbox row, and their content type."""
        body = self.text if self.body is None else self.body
        if isinstance(body, bytes):
            return body, self.content_type
        if isinstance(body, str):
            charset = self.headers.get("charset") or "utf-8"
            try:
                return body.encode(charset), self.content_type
            except (UnicodeEncodeError, LookupError):
                return body.encode("utf-8"), self.content_type
        return _JSON.encode(body).encode("utf-8"), "application/json"


# What json.dumps(body, ensure_ascii=False, default=str, sort_keys=True) builds on every call,
# built once (the same bytes: three JSON bodies a routed ORU).
_JSON = json.JSONEncoder(ensure_ascii=False, default=str, sort_keys=True)
