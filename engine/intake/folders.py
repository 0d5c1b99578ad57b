"""Files from folder channels: HL7 v2 (single, several, FHS/BHS batches) and CDA documents.

A file is one transaction: its record and all its messages commit together, so a crash
leaves either everything or nothing, and the record makes a second pickup a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from channels.folder import FileOutcome
from engine.intake.handler import Intake, IntakePolicy
from engine.intake.stored_bytes import keep_head
from engine.store.database import Arrival, ReusePolicy, Store, dedup_key
from engine.store.models import MessageStatus
from safexml import UnsafeXML, parse
from transformers.cda.header import NotCDA, read_header
from transformers.hl7.batch import split_messages

log = logging.getLogger("parcours.file_intake")


class FileIntake:
    def __init__(self, store: Store, intake: Intake) -> None:
        self.store = store
        self.intake = intake

    async def process(
        self, policy: IntakePolicy, name: str, data: bytes, sha256: str
    ) -> FileOutcome:
        return await asyncio.to_thread(self._process, policy, name, data, sha256)

    def _process(self, policy: IntakePolicy, name: str, data: bytes, sha256: str,
                 origin: str | None = None,
                 stamp: Callable[[list[Arrival]], None] | None = None) -> FileOutcome:
        """`origin`: "history" for `parcours import --routes-as history`; `stamp` sets the
        arrivals' times before they are stored (`parcours import`: their original time)."""
        known = self.store.find_file(policy.channel, name, sha256)
        if known is not None:
            # Recorded before a crash, not yet moved: finish the move, process nothing again.
            log.info("file already recorded; finishing move",
                     extra={"channel": policy.channel, "file_id": known["id"]})
            return FileOutcome(known["status"], known["reason"], known["message_count"])
        if name.lower().endswith(".xml"):
            arrivals, reason = self._cda(policy, name, data)
        else:
            arrivals, reason = self._hl7(policy, data)
        status = "error" if reason else "archived"
        for a in arrivals:  # issue #17: a refused file keeps its head, not all of it
            keep_head(a, policy.max_stored_bytes)
            a.origin = origin
        if stamp is not None:
            stamp(arrivals)
        if policy.daily_volume_alarm_bytes is not None:
            self.intake.volume_of(policy).add(f"folder {policy.channel}", len(data))
        _, saved = self.store.save_file(
            channel=policy.channel, name=name, sha256=sha256, size=len(data), status=status,
            reason=reason, arrivals=arrivals,
        )
        stats = self.intake.stats_for(policy.channel)
        for s in saved:
            if s.refused:
                stats.reuses_refused += 1
                status = "error"
                reason = "\n".join(filter(None, [reason, s.refusal_text]))
            elif s.reuse_of is not None:
                stats.reuses += 1
            elif s.duplicate_of is not None:
                stats.duplicates += 1
            if s.reuse_of is not None:
                log.warning("control id reused with different content; %s",
                            "refused" if s.refused else "processed as a new message",
                            extra={"channel": policy.channel, "message_id": s.id,
                                   "reuse_of": s.reuse_of})
        return FileOutcome(status, reason, len(arrivals))

    def _hl7(self, policy: IntakePolicy, data: bytes) -> tuple[list[Arrival], str | None]:
        batch = split_messages(data)
        if not batch.messages:
            arrival = Arrival(channel=policy.channel, raw=data, status=MessageStatus.REJECTED,
                              error="no MSH segment found: not an HL7 v2 file")
            return [arrival], arrival.error
        arrivals: list[Arrival] = []
        problems: list[str] = []
        for i, raw in enumerate(batch.messages, start=1):
            decision = self.intake.decide(raw, policy, remote="file")
            a = decision.arrival
            arrivals.append(a)
            if a.status != MessageStatus.ACCEPTED:
                problems.append(
                    f"message {i} (MSH-10 {a.control_id or '?'}): {a.ack_code} {a.error}"
                )
        if batch.leading_junk.strip():
            problems.append(f"{len(batch.leading_junk)} bytes before the first MSH were ignored")
        return arrivals, "\n".join(problems) or None

    def _cda(
        self, policy: IntakePolicy, name: str, data: bytes
    ) -> tuple[list[Arrival], str | None]:
        arrival = Arrival(channel=policy.channel, raw=data, status=MessageStatus.ACCEPTED,
                          received_at=datetime.now(UTC), remote="file", message_type="CDA",
                          charset="xml")
        try:
            header = read_header(parse(data))
        except (UnsafeXML, NotCDA) as exc:
            arrival.status, arrival.error = MessageStatus.REJECTED, f"CDA refused: {exc}"
            return [arrival], arrival.error
        arrival.control_id = header.document_id[:199]
        arrival.trigger_event = header.type_code[:16] or None
        arrival.sending_facility = header.custodian[:255] or None
        arrival.patient_key = header.patient_key
        arrival.dedup = dedup_key(policy.channel, "CDA", header.custodian, header.document_id)
        arrival.on_reuse = policy.on_reused_control_id
        if policy.on_reused_control_id == ReusePolicy.REFUSE:
            document_id, custodian = header.document_id, header.custodian

            def refusal(first_id: int) -> tuple[str | None, bytes | None, str]:
                return None, None, (
                    f"{name}: ClinicalDocument/id {document_id} from custodian {custodian} "
                    f"was already received with different content (message {first_id}); "
                    "refused (on_reused_control_id: refuse). A new version of a document "
                    "carries a new id (CDA R2 relatedDocument, setId/versionNumber)")

            arrival.refusal = refusal
        return [arrival], None
