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
  with the DMP's codes, which also go to the delivery's `error_code`; a retry after a lost
  answer finds its own document (same uniqueId and hash) and counts as delivered —
  at-least-once delivery, exactly-once effect;
- versions: a document whose content type says `versioning=feed` (the `crbio` transformer's
  CR-BIO) is numbered here, from the record `versions` keeps in the store: the first
  document of a set is version 1, each later one (a correction, a second report of the same
  order) the next version, replacing (RPLC) the latest version submitted — a pure
  transformer cannot know how many versions the DMP already holds;
- VIHF: CONNEXION_SECRETE=Y (MetaDMPMSS) asks the DMP for a secret connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

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
from safexml import UnsafeXML, parse
from transformers.cda.embedded import EmbeddedDocument, NoEmbeddedDocument, document_from_hl7
from transformers.cda.validate import validate_cda
from transformers.cda.versioning import NotVersionable, renumber, set_id

from .base import OutboundItem, Outcome

log = logging.getLogger("parcours.dmp")
ConsentCheck = Callable[[OutboundItem], "tuple[bool, str] | Awaitable[tuple[bool, str]]"]
OPPOSED = "patient opposed feeding the DMP"

_default_consent_check: ConsentCheck | None = None


@dataclass(frozen=True)
class SetVersion:
    """The version a delivery's document takes in its set, and the uniqueId
    ("root^extension") of the latest version already submitted that it replaces ("" if none)."""

    version: int
    replaces: str


class DocumentVersions(Protocol):
    """Per-set record of what this feed submitted (the engine keeps it in the store).

    `reserve` is idempotent per (destination, idempotency key): a retry gets the version it
    got before, a replay or the next correction a new one. Called from a worker thread.
    """

    def reserve(self, destination: str, set_id: str, key: str) -> SetVersion: ...

    def submitted(self, destination: str, key: str, unique_id: str) -> None: ...

    def latest(self, destination: str, set_id: str) -> str: ...

    def deleted(self, destination: str, unique_id: str) -> None: ...


_default_versions: DocumentVersions | None = None


def set_consent_check(check: ConsentCheck | None) -> None:
    """Installed by the engine (timeline consent, issue #5) for every dmp destination built
    afterwards through the factory."""
    global _default_consent_check
    _default_consent_check = check


def set_document_versions(versions: DocumentVersions | None) -> None:
    """Installed by the engine (store-backed record) for every dmp destination built
    afterwards through the factory; without it, documents are sent as the transformer built
    them (a second correction would then reuse version 2 and be refused as a duplicate)."""
    global _default_versions
    _default_versions = versions


def content_type_param(content_type: str, name: str) -> str | None:
    """A parameter of the delivery's content type (RFC 2045 §5.1 syntax): the one piece of
    transformer output, besides the body, that the store keeps with the delivery."""
    for part in content_type.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"').lower()
    return None


def feed_numbered(content_type: str) -> bool:
    """`versioning=feed` in the content type: the transformer leaves the version to us."""
    params = [p.strip().lower() for p in content_type.split(";")[1:]]
    return "versioning=feed" in params


class DMPDestination:
    type = "dmp"
    # The consent check reads the patient the timeline resolved for this very message (a lab
    # result may carry only the lab's identifier until the timeline links it to the person
    # who opposed): the runner sends a message to the DMP only after its timeline delivery.
    after_timeline = True

    def __init__(self, name: str, cfg: dict[str, Any],
                 consent_check: ConsentCheck | None = None,
                 versions: DocumentVersions | None = None) -> None:
        self.name = name
        options = dict(cfg.get("options") or {})
        for key in ("url", "tls", "timeout"):  # accept them at the top level too
            if key in cfg and key not in options:
                options[key] = cfg[key]
        self.config = DMPConfig.from_options(options)
        self.validate = bool(options.get("validate_cda", True))
        self.consent_check = consent_check or _default_consent_check
        self.versions = versions or _default_versions
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
        # Headers live only while routing; the content type is stored with the delivery, so
        # a deletion (OBX-11 = D) still reads as one when the delivery runs or is retried.
        action = str(item.headers.get("dmp_action")
                     or content_type_param(item.content_type, "action") or "submit")
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
        numbered: SetVersion | None = None
        feed = self.versions is not None and feed_numbered(item.content_type) and set_id(root)
        to_delete = ""  # a feed-numbered report: the latest version this feed got accepted
        if feed and doc.action == "delete":
            # Not the deletion message's own (never submitted) document id.
            to_delete = await asyncio.to_thread(self.versions.latest,  # type: ignore[union-attr]
                                                self.name, set_id(root))
            if not to_delete:
                return Outcome.dead(f"deletion of report {set_id(root)}: no version of it was "
                                    "accepted by the DMP through this destination")
        elif feed:
            numbered = await asyncio.to_thread(self.versions.reserve, self.name, set_id(root),
                                               item.idempotency_key)
            try:
                doc = replace(doc, cda=renumber(root, numbered.version, numbered.replaces))
            except NotVersionable as exc:
                return Outcome.dead(f"cannot number the document's version: {exc}")
            root = parse(doc.cda)
        if self.validate and doc.action != "delete":  # a deletion submits no document
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
        secret = doc.secret_connection
        try:
            if doc.action == "delete":
                outcome = await self._delete(to_delete or entry.unique_id, entry.patient_id,
                                             sset, secret)
            else:
                outcome = await self._provide(item, doc, entry, sset, secret)
        except DMPUnavailable as exc:
            return Outcome.retry(f"DMP unreachable: {exc}", error_code=exc.code)
        except SoapError as exc:
            return Outcome.dead(str(exc), error_code="SOAPFault")
        if outcome.kind == "delivered" and self.versions is not None:
            if numbered is not None:
                await asyncio.to_thread(self.versions.submitted, self.name,
                                        item.idempotency_key, entry.unique_id)
            elif to_delete:
                await asyncio.to_thread(self.versions.deleted, self.name, to_delete)
        return outcome

    async def _provide(self, item: OutboundItem, doc: EmbeddedDocument, entry: Any,
                       sset: Any, secret: bool) -> Outcome:
        """ITI-41, with the RPLC target found by ITI-18 when the document replaces another."""
        if item.attempt > 1 and entry.parent_unique_id and await self._already_there(
                entry.patient_id, entry.unique_id, entry.hash, secret):
            # A replacement whose answer was lost: its parent is deprecated by now, so the
            # lookup below would fail; finding our own document first makes it delivered.
            return Outcome.delivered("already in the DMP (same uniqueId and hash)",
                                     response="Success (earlier attempt)")
        replaces = ""
        if doc.action == "replace" or entry.parent_unique_id:
            if not entry.parent_unique_id:
                return Outcome.dead("replacement without relatedDocument/parentDocument "
                                    "in the CDA: cannot tell which document it replaces")
            found = await self._find(entry.patient_id, entry.parent_unique_id, secret)
            if isinstance(found, Outcome):
                return found
            if found is None:
                return Outcome.dead("document to replace is not in the DMP "
                                    f"(uniqueId {entry.parent_unique_id})")
            replaces = found
        result = await self.client.provide_and_register(doc.cda, entry, sset, replaces,
                                                        secret=secret)
        if not result.ok and any(e.code == "XDSDuplicateUniqueIdInRegistry"
                                 for e in result.errors):
            if await self._already_there(entry.patient_id, entry.unique_id, entry.hash,
                                         secret):
                return Outcome.delivered("already in the DMP (same uniqueId and hash)",
                                         response="Success (earlier attempt)")
        return self._outcome(result, "ITI-41")

    async def _find(self, patient_cx: str, unique_id: str,
                    secret: bool = False) -> str | None | Outcome:
        result, entries = await self.client.get_documents(patient_cx, unique_id, secret=secret)
        if not result.ok:
            return self._outcome(result, "ITI-18")
        approved = [e for e in entries if e.status == APPROVED]
        return approved[0].entry_uuid if approved else None

    async def _already_there(self, patient_cx: str, unique_id: str, sha1: str,
                             secret: bool = False) -> bool:
        result, entries = await self.client.get_documents(patient_cx, unique_id, secret=secret)
        return result.ok and any(e.hash.lower() == sha1 for e in entries)

    async def _delete(self, unique_id: str, patient_cx: str, sset: Any,
                      secret: bool = False) -> Outcome:
        result, entries = await self.client.get_documents(patient_cx, unique_id, secret=secret)
        if not result.ok:
            return self._outcome(result, "ITI-18")
        if any(e.status == DELETED for e in entries) and not any(
                e.status != DELETED for e in entries):
            return Outcome.delivered("already deleted in the DMP", response="Success (earlier)")
        live = [e for e in entries if e.status != DELETED]
        if not live:
            return Outcome.dead(f"document to delete is not in the DMP (uniqueId {unique_id})")
        result = await self.client.update_status(sset, live[0].entry_uuid, live[0].status,
                                                 DELETED, secret=secret)
        return self._outcome(result, "ITI-57")

    @staticmethod
    def _outcome(result: RegistryResult, transaction: str) -> Outcome:
        summary = f"{transaction} {result.summary()}"
        if result.ok:
            return Outcome.delivered(response=summary)
        # RegistryError/@errorCode values (ITI TF-3 §4.2.4.1), distinct, in the DMP's order.
        codes = ",".join(dict.fromkeys(e.code for e in result.errors if e.code)) or None
        if transient(result):
            return Outcome.retry(f"DMP busy: {result.summary()}", response=summary,
                                 error_code=codes)
        if result.status == iti41.PARTIAL:
            return Outcome.dead(f"DMP partial success: {result.summary()}", response=summary,
                                error_code=codes)
        return Outcome.dead(f"DMP refused: {result.summary()}", response=summary,
                            error_code=codes)

    async def close(self) -> None:
        await self.client.close()
