"""The routes page's dry-run box: `parcours routes test` for a pasted message.

Calls the running router's pure `evaluate` through the engine's port (no store, no bus, no
destination), so what the page shows is exactly what the running routes would do with that
message. Nothing is kept: the sample is neither stored nor logged (it usually carries patient
data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.routing.router import RouteResult, exchange_from_bytes
from transformers.exchange import Exchange

PREVIEW_CHARS = 4000
MAX_SAMPLE_BYTES = 2 * 1024 * 1024


@dataclass
class DryMessage:
    index: int
    code: str
    control_id: str
    sender: str
    routes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DryRun:
    messages: list[DryMessage]
    problem: str | None = None

    @property
    def any_match(self) -> bool:
        return any(r["matched"] for m in self.messages for r in m.routes)


def dry_run(evaluate: Callable[[Exchange], list[RouteResult]], sample: str, channel: str
            ) -> DryRun:
    from transformers.hl7.batch import split_messages

    data = sample.encode("utf-8")
    if not data.strip():
        return DryRun([], "paste an HL7 v2 message (starting with MSH) or a CDA document")
    if len(data) > MAX_SAMPLE_BYTES:
        return DryRun([], f"the sample is larger than {MAX_SAMPLE_BYTES // 1024} KiB")
    # A browser textarea sends CRLF; HL7 separates segments with CR (v2.5.1 §2.5.1).
    if not data.lstrip().startswith(b"<"):
        data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    samples = [data] if data.lstrip().startswith(b"<") else split_messages(data).messages
    if not samples:
        return DryRun([], "no HL7 message found (no MSH segment) and not XML")
    out: list[DryMessage] = []
    for i, raw in enumerate(samples, start=1):
        ex = exchange_from_bytes(raw, channel=channel)
        h = ex.headers
        dm = DryMessage(i, h["message_code"] or "?", h["control_id"] or "?",
                        f"{h['sending_application']}/{h['sending_facility']}")
        for res in evaluate(ex):
            payloads = []
            for p in res.payloads:
                body = p.payload.decode("utf-8", "replace").replace("\r\n", "\n")
                body = body.replace("\r", "\n")
                payloads.append({"destination": p.destination, "content_type": p.content_type,
                                 "size": len(p.payload), "preview": body[:PREVIEW_CHARS],
                                 "cut": max(0, len(body) - PREVIEW_CHARS)})
            dm.routes.append({"route": res.route, "matched": res.matched,
                              "reason": res.reason, "steps": res.steps, "error": res.error,
                              "filtered_by": res.filtered_by, "payloads": payloads,
                              "backlog": res.backlog})
        out.append(dm)
    return DryRun(out)
