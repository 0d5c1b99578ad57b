"""Enhanced-mode application acknowledgements (HL7 v2.5.1 §2.9.3), sent after routing.

The commit ACK (CA) said "stored"; the application ACK says what the engine made of it:
AA when it was routed (deliveries recorded, or no route wanted it), AE when routing failed
(a transformer error dead-lettered its deliveries). MSH-16 decides whether it is sent:
AL always, ER only for AE, SU only for AA. It goes out on the sender's connection, after
the replies already owed there; if that connection is gone it is kept on the message.
"""

from __future__ import annotations

from typing import Any

from engine.intake.handler import new_control_id
from engine.store.models import MessageStatus
from transformers.hl7.ack import AckError, build_ack_bytes
from transformers.hl7.header import HeaderError, read_header


def build_application_ack(row: dict[str, Any], application: str = "PARCOURS"
                          ) -> tuple[str, bytes | None]:
    """(code, bytes or None when MSH-16 says not to send)."""
    try:
        header = read_header(row["raw"])
    except HeaderError:
        return "AR", None
    failed = row["status"] == MessageStatus.FAILED
    code = "AE" if failed else "AA"
    mode = row["mode"]
    due = mode == "AL" or (mode == "ER" and failed) or (mode == "SU" and not failed)
    errors = [AckError.at(207, row["error"] or "routing failed", "MSH")] if failed else []
    ack = build_ack_bytes(header, code, charset=row.get("charset") or "utf-8",
                          control_id=new_control_id(), errors=errors, application=application)
    return code, ack if due else None
