"""Requests to support structures — DAC referrals (issue #14).

`install(engine)` is the engine's one call: the `Referrals` service on the store, the
"referral" event type of the timeline's applier (REF^I12/I13/I14 through the `timeline`
destination), and intake's check of a REF before its ACK (AE + ERR for what the workflow
cannot do without). The web pages are `ui.build_router`, included by engine/ui.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.referrals.service import NotFound, Referrals, ReferralSettings
from engine.referrals.workflow import TransitionError

if TYPE_CHECKING:
    from engine.api.port import EngineView
    from transformers.hl7.ack import AckError
    from transformers.hl7.header import Header

__all__ = ["NotFound", "ReferralSettings", "Referrals", "TransitionError", "install"]


def install(engine: EngineView) -> Referrals:
    from engine.referrals.replies import StatusReplies, reply_targets
    from engine.timeline.apply import register_event_type

    referrals = Referrals(engine.store.engine)
    referrals.replies = StatusReplies(lambda: reply_targets(getattr(engine, "config", None)),
                                      engine.settings.partitions,
                                      engine.notify_partition_from_thread)
    engine.referrals = referrals
    register_event_type("referral", referrals.apply_hl7)
    engine.add_intake_check("REF", intake_check(referrals))
    from engine.fhir import registry_of
    from engine.referrals.fhir import register as register_fhir

    register_fhir(registry_of(engine), referrals)  # ServiceRequest + Task (docs/fhir.md)
    return referrals


def intake_check(referrals: Referrals) -> Any:
    def check(text: str, header: Header) -> list[AckError]:
        from transformers.hl7.ack import AckError
        from transformers.hl7.reader import HL7ReadError, Message
        from transformers.hl7.referral import referral_problems

        try:
            msg = Message.parse(text)
            return referral_problems(msg, header.trigger_event, referrals.known_structure)
        except HL7ReadError as exc:
            return [AckError.at(102, f"the referral could not be read: {exc}", "MSH")]
        except Exception as exc:  # noqa: BLE001 - bad input must get an answer, not a crash
            return [AckError.at(102, "the referral could not be read "
                                     f"({type(exc).__name__})", "RF1")]

    return check
