"""`dmp` destination: feed the DMP (IHE XDS.b ITI-41 with CI-SIS metadata).

Payload: a CDA document (`application/cda+xml`, `text/xml`, from the `crbio` transformer or a
facility), or an HL7 v2 ORU/MDM carrying the CDA in OBX (ED), whose OBX-11 and MetaDMPMSS
options decide the action and the masking codes.

Policy owned here (the connector only transports):
- consent: `consent_check(item) -> (allowed, reason)`, wired by the engine from the timeline
  (ZFA opposition); refused → dead with the reason, nothing leaves;
- submit → ITI-41; replace → ITI-18 GetDocuments finds the replaced entry, ITI-41 with RPLC;
  delete → ITI-18 then ITI-57 (availabilityStatus Deleted, CI-SIS TD3.3c);
- answers: Success → delivered; network/5xx/"busy" → retry; any other RegistryError → dead
  with the DMP's codes; a retry after a lost answer finds its own document (same uniqueId and
  hash) and counts as delivered — at-least-once delivery, exactly-once effect.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from connectors.dmp import iti41
from connectors.dmp.client import DMPClient, DMPConfig, DMPUnavailable, transient
from connectors.dmp.iti41 import RegistryResult, SoapError
from connectors.dmp.metadata import (
    APPROVED,
    DELETED,
    MetadataError,
    document_entry,
    submission_set,
)
from transformers.cda.embedded import EmbeddedDocument, NoEmbeddedDocument, document_from_hl7
from transformers.cda.safe_xml import UnsafeXML, parse
from transformers.cda.validate import validate_cda

from .base import OutboundItem, Outcome

log = logging.getLogger("parcours.dmp")
ConsentCheck = Callable[[OutboundItem], "tuple[bool, str] | Awaitable[tuple[bool, str]]"]
OPPOSED = "patient opposed feeding the DMP"

_default_consent_check: ConsentCheck | None = None


def set_consent_check(check: ConsentCheck | None) -> None:
    """Installed by the engine (timeline consent, issue #5) for every dmp destination built
    afterwards through the factory."""
    global _default_consent_check
    _default_consent_check = check


class DMPDestination:
    type = "dmp"

    def __init__(self, name: str, cfg: dict[str, Any],
                 consent_check: ConsentCheck | None = None) -> None:
        self.name = name
        options = dict(cfg.get("options") or {})
        for key in ("url", "tls", "timeout"):  # accept them at the top level too
            if key in cfg and key not in options:
                options[key] = cfg[key]
        self.config = DMPConfig.from_options(options)
        self.validate = bool(options.get("validate_cda", True))
        self.consent_check = consent_check or _default_consent_check
        self.client = DMPClient(self.config)

    async def _consent(self, item: OutboundItem) -> tuple[bool, str]:
        if self.consent_check is None:
            return True, ""
        answer = self.consent_check(item)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer  # type: ignore[return-value]

    def _document(self, item: OutboundItem) -> EmbeddedDocument:
        ctype = item.content_type.split(";")[0].strip().lower()
        if ctype in ("application/hl7-v2", "x-application/hl7-v2+er7"):
            return document_from_hl7(item.payload.decode("utf-8", "replace"))
        action = str(item.headers.get("dmp_action") or "submit")
        masking = list(item.headers.get("dmp_masking") or [])
        return EmbeddedDocument(item.payload, action, masking)

    async def send(self, item: OutboundItem) -> Outcome:
        allowed, reason = await self._consent(item)
        if not allowed:
            return Outcome.dead(reason or OPPOSED, response="not sent (consent)")
        try:
            doc = self._document(item)
            root = parse(doc.cda)
        except (NoEmbeddedDocument, UnsafeXML) as exc:
            return Outcome.dead(f"no usable CDA document: {exc}")
        if not doc.for_dmp:
            return Outcome.delivered("not addressed to the DMP (DESTDMP=N)",
                                     response="skipped")
        if self.validate:
            report = validate_cda(root)
            if not report.valid:
                return Outcome.dead("CDA fails the CDA R2/ANS schema: " + report.summary(3))
        try:
            entry = document_entry(doc.cda, root, masking=doc.masking,
                                   patient_class=doc.patient_class)
        except MetadataError as exc:
            return Outcome.dead(f"CI-SIS metadata: {exc}")
        # SubmissionSet.uniqueId from the idempotency key: the same delivery retried is the
        # same submission for the DMP's logs, a replay is a new one.
        digest = int(hashlib.sha256(item.idempotency_key.encode()).hexdigest()[:24], 16)
        sset = submission_set(entry, source_id=self.config.source_id,
                              unique_id=f"{self.config.submission_oid}.{digest}",
                              patient_class=doc.patient_class)
        sset.entry_uuid = f"urn:uuid:{uuid.uuid4()}"
        try:
            if doc.action == "delete":
                return await self._delete(entry.unique_id, entry.patient_id, sset)
            replaces = ""
            if doc.action == "replace" or entry.parent_unique_id:
                if not entry.parent_unique_id:
                    return Outcome.dead("replacement without relatedDocument/parentDocument "
                                        "in the CDA: cannot tell which document it replaces")
                found = await self._find(entry.patient_id, entry.parent_unique_id)
                if isinstance(found, Outcome):
                    return found
                if found is None:
                    return Outcome.dead("document to replace is not in the DMP "
                                        f"(uniqueId {entry.parent_unique_id})")
                replaces = found
            result = await self.client.provide_and_register(doc.cda, entry, sset, replaces)
            if not result.ok and any(e.code == "XDSDuplicateUniqueIdInRegistry"
                                     for e in result.errors):
                if await self._already_there(entry.patient_id, entry.unique_id, entry.hash):
                    return Outcome.delivered("already in the DMP (same uniqueId and hash)",
                                             response="Success (earlier attempt)")
            return self._outcome(result, "ITI-41")
        except DMPUnavailable as exc:
            return Outcome.retry(f"DMP unreachable: {exc}")
        except SoapError as exc:
            return Outcome.dead(str(exc))

    async def _find(self, patient_cx: str, unique_id: str) -> str | None | Outcome:
        result, entries = await self.client.get_documents(patient_cx, unique_id)
        if not result.ok:
            return self._outcome(result, "ITI-18")
        approved = [e for e in entries if e.status == APPROVED]
        return approved[0].entry_uuid if approved else None

    async def _already_there(self, patient_cx: str, unique_id: str, sha1: str) -> bool:
        result, entries = await self.client.get_documents(patient_cx, unique_id)
        return result.ok and any(e.hash.lower() == sha1 for e in entries)

    async def _delete(self, unique_id: str, patient_cx: str, sset: Any) -> Outcome:
        result, entries = await self.client.get_documents(patient_cx, unique_id)
        if not result.ok:
            return self._outcome(result, "ITI-18")
        if any(e.status == DELETED for e in entries) and not any(
                e.status != DELETED for e in entries):
            return Outcome.delivered("already deleted in the DMP", response="Success (earlier)")
        live = [e for e in entries if e.status != DELETED]
        if not live:
            return Outcome.dead(f"document to delete is not in the DMP (uniqueId {unique_id})")
        result = await self.client.update_status(sset, live[0].entry_uuid, live[0].status,
                                                 DELETED)
        return self._outcome(result, "ITI-57")

    @staticmethod
    def _outcome(result: RegistryResult, transaction: str) -> Outcome:
        summary = f"{transaction} {result.summary()}"
        if result.ok:
            return Outcome.delivered(response=summary)
        if transient(result):
            return Outcome.retry(f"DMP busy: {result.summary()}", response=summary)
        if result.status == iti41.PARTIAL:
            return Outcome.dead(f"DMP partial success: {result.summary()}", response=summary)
        return Outcome.dead(f"DMP refused: {result.summary()}", response=summary)

    async def close(self) -> None:
        await self.client.close()
