"""REF^I12/I13/I14 → one "referral" event: a request to a support structure (DAC).

HL7 v2.5.1 chapter 11 (§11.3.1 I12 create, I13 modify, I14 cancel; RF1 §11.6.1). The event
key is RF1-6 with its assigning authority, so the same request sent again, modified or
cancelled lands on one referral, whatever the MSH-10 of each message.
"""

from __future__ import annotations

from transformers.exchange import Exchange
from transformers.hl7.referral import read_referral

from .common import EventError, envelope, hl7_time, patient_from_pid

ACTIONS = {"I12": "create", "I13": "modify", "I14": "cancel"}


def referral_key(ident: dict[str, str]) -> str:
    return f"{ident['authority']}|{ident['value']}"


def ref_events(exchange: Exchange) -> Exchange | None:
    msg = exchange.message
    if msg is None or exchange.headers.get("message_type") != "REF":
        return None
    trigger = exchange.headers.get("trigger_event") or ""
    action = ACTIONS.get(trigger)
    if action is None:
        raise EventError(f"REF^{trigger}: not a referral request Parcours applies "
                         "(I12 create, I13 modify, I14 cancel)")
    try:
        ref = read_referral(msg)
    except ValueError as exc:
        raise EventError(str(exc)) from None
    if ref["id"] is None:
        raise EventError("RF1-6 originating referral identifier is missing")
    for field in ("effective", "expires", "processed"):
        ref[field] = hl7_time(ref[field] or "")
    event = {**ref, "type": "referral", "key": referral_key(ref["id"]), "action": action,
             "trigger": trigger, "at": ref["processed"] or ref["effective"]
             or hl7_time(msg.get("MSH-7.1"))}
    return envelope(exchange, patient_from_pid(msg), [event])


# What the requester is told on receipt: the request is pending at the structure (table
# 0283 P); a cancellation is acknowledged as no longer active (R — 0283 has no "cancelled").
RECEIPT_STATUS = {"I12": "P", "I13": "P", "I14": "R"}


def referral_response(exchange: Exchange) -> Exchange | None:
    """REF → the RRI^I12 answering it, for a destination that sends it back to the
    requester (routes.yaml `referral-response`)."""
    from transformers.hl7.referral import referral_id
    from transformers.hl7.rri import build_rri

    from .common import cx_list

    msg = exchange.message
    trigger = exchange.headers.get("trigger_event") or ""
    if msg is None or exchange.headers.get("message_type") != "REF" or trigger not in ACTIONS:
        return None
    ident = referral_id(msg)
    if ident is None:
        raise EventError("RF1-6 originating referral identifier is missing")
    ref = read_referral(msg)
    exchange.body = build_rri(
        control_id=f"RRI{exchange.message_id}",
        in_reply_to=exchange.headers.get("control_id") or "",
        status_code=RECEIPT_STATUS[trigger], referral_id=ident,
        patient_ids=cx_list(msg.segment("PID"), 3), providers=ref["providers"],
        sending=(msg.get("MSH-5.1") or "PARCOURS", msg.get("MSH-6.1")),
        receiving=(msg.get("MSH-3.1"), msg.get("MSH-4.1")),
        version=msg.get("MSH-12.1") or "2.5", processing_id=msg.get("MSH-11.1") or "P")
    exchange.content_type = "application/hl7-v2"
    return exchange
