"""`parcours dmp-sim`: a local DMP test responder (ITI-41, ITI-18, ITI-43, ITI-57).

Why: integrators rehearse a DMP feed before they get access to the ANS test platform, and
the tests need a peer that says no the way the DMP does. It checks what the real platform
checks first — SOAP/WS-Addressing, the VIHF assertion (signature when a trusted certificate is
given, resource-id = patientId), the ebRS/XDS.b schemas, the CI-SIS value sets, hash and size
of the document — and keeps documents in memory so that replacement (RPLC), deletion
(ITI-57) and queries behave as on a registry.

Errors answered (RegistryResponse Failure, ITI TF-3 Table 4.2.4.1-2 codes where they exist):
  XDSUnknownPatientId       patient has no DMP here
  DMPClosed                 (simulator code) the patient's DMP is closed
  XDSRegistryMetadataError  schema or CI-SIS metadata rule broken (the context says which)
  XDSRepositoryMetadataError hash/size do not match the attachment
  XDSPatientIdDoesNotMatch  VIHF resource-id or replaced entry for another patient
  XDSDuplicateUniqueIdInRegistry  uniqueId already registered
  UnresolvedReferenceException    RPLC / status update target unknown
  XDSRegistryBusy           injected with `fail_next` (transient)
  XDSMissingDocument        ITI-43 for a document it does not hold (location = its uniqueId)
  XDSUnknownRepositoryId    ITI-43 naming another repository
  XDSUnknownStoredQuery     a stored query other than FindDocuments / GetDocuments
  <any code>                every ITI-18 / ITI-43 refused with it (`refuse`, --refuse)
Reads (ITI-18 FindDocuments, ITI-43) check the VIHF as writes do; `seed` puts example
documents in a patient's DMP (seed.py) and `stall_seconds` makes it answer late (timeouts).
Malformed or hostile messages get a SOAP Sender fault (HTTP 400); no patient data is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from lxml import etree

from safexml import copy, parse

from . import iti41
from .entries import codes, external_id, read_document_entry, slot_value
from .iti41 import RegistryError, SoapError
from .metadata import (
    APPROVED,
    DE_CONFIDENTIALITY,
    DE_FACILITY,
    DE_PATIENT_ID,
    DE_PRACTICE,
    DE_TYPE,
    DE_UNIQUE_ID,
    DELETED,
    DEPRECATED,
    INS_OIDS,
    RIM,
    RPLC,
    SS_PATIENT_ID,
    UPDATE_STATUS,
    XDSB,
    DocumentEntry,
    document_entry_xml,
    in_value_set,
    schema_errors,
)
from .retrieve import RetrievedDocument, read_retrieve_request, retrieve_response
from .saml import InvalidAssertion, assertion_attributes, verify_assertion
from .seed import seed_documents
from .stored_query import (
    FIND_DOCUMENTS,
    GET_DOCUMENTS,
    StoredQuery,
    adhoc_query_response,
    read_adhoc_query,
)

log = logging.getLogger("parcours.dmp_sim")
REPOSITORY_ID = "1.2.250.1.213.1.1.9.1"
MAX_REQUEST_BYTES = 40 * 1024 * 1024


@dataclass
class StoredDocument:
    entry_uuid: str
    unique_id: str
    patient_id: str
    status: str
    hash: str
    metadata: bytes  # the ExtrinsicObject as received
    content: bytes
    replaces: str = ""  # entryUUID this entry replaced (RPLC association), if any


@dataclass
class SimulatorState:
    """Patients and documents. `patients` empty = every valid INS has an open DMP."""

    patients: set[str] = field(default_factory=set)  # INS values with an open DMP
    closed: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    trusted_cert: bytes = b""  # VIHF signing certificate (PEM); empty: signature not checked
    require_vihf: bool = True
    documents: dict[str, StoredDocument] = field(default_factory=dict)
    # "busy", "http503", "garbage" (a 200 that is not XML): the next answers (tests, rehearsal)
    fail_next: list[str] = field(default_factory=list)
    refuse: str = ""  # RegistryError code answered to every ITI-18 / ITI-43 (rehearsal)
    stall_seconds: float = 0.0  # wait this long before answering (a slow DMP: timeouts)
    received: list[str] = field(default_factory=list)  # actions received, for tests
    queries: list[StoredQuery] = field(default_factory=list)  # ITI-18 parameters received
    vihf: list[dict[str, list[str]]] = field(default_factory=list)  # VIHF attributes seen
    lock: threading.Lock = field(default_factory=threading.Lock)

    def by_unique_id(self, uid: str) -> list[StoredDocument]:
        return [d for d in self.documents.values() if d.unique_id == uid]

    def seed(self, patient_cx: str) -> int:
        """Put the seeded documents (seed.py) in this patient's DMP; returns how many."""
        seeded = seed_documents(patient_cx, REPOSITORY_ID)
        for entry, content in seeded:
            self.documents[entry.entry_uuid] = StoredDocument(
                entry.entry_uuid, entry.unique_id, patient_cx, entry.status, entry.hash,
                etree.tostring(document_entry_xml(entry)), content)
        return len(seeded)


class Reject(Exception):
    def __init__(self, code: str, context: str, location: str = "") -> None:
        super().__init__(context)
        self.error = RegistryError(code, context, location=location)


def _ins(cx: str) -> tuple[str, str]:
    """CX 'value^^^&OID&ISO^NH' → (value, OID)."""
    parts = cx.split("^")
    oid = parts[3].split("&")[1] if len(parts) > 3 and "&" in parts[3] else ""
    return parts[0], oid


class Simulator:
    def __init__(self, state: SimulatorState | None = None) -> None:
        self.state = state or SimulatorState()

    # ------------------------------------------------------------------ dispatch
    def handle(self, body: bytes, content_type: str) -> tuple[int, bytes, str]:
        """(HTTP status, body, content type) for one request. Pure: usable without a server."""
        if self.state.fail_next and self.state.fail_next[0] == "http503":
            self.state.fail_next.pop(0)
            return 503, b"Service Unavailable", "text/plain"
        if self.state.fail_next and self.state.fail_next[0] == "garbage":  # a broken DMP
            self.state.fail_next.pop(0)
            return 200, b"<soap:Envelope>not XML", "application/soap+xml"
        try:
            msg = iti41.read_message(body, content_type, max_bytes=MAX_REQUEST_BYTES)
        except SoapError as exc:
            log.info("dmp-sim: refused malformed request: %s", str(exc)[:200])
            return self._fault("Sender", f"message refusé : {exc}")
        handlers = {iti41.ITI41: self._iti41, iti41.ITI18: self._iti18,
                    iti41.ITI43: self._iti43, iti41.ITI57: self._iti57}
        handler = handlers.get(msg.action)
        if handler is None:
            return self._fault("Sender", f"wsa:Action inconnue ou absente : {msg.action!r}")
        if not msg.message_id:
            return self._fault("Sender", "wsa:MessageID absent")
        self.state.received.append(msg.action)
        if self.state.fail_next and self.state.fail_next[0] == "busy":
            self.state.fail_next.pop(0)
            return self._failure(msg, [RegistryError(
                "XDSRegistryBusy", "registre momentanément indisponible")])
        with self.state.lock:
            return handler(msg)

    def _fault(self, code: str, reason: str) -> tuple[int, bytes, str]:
        env = iti41.soap_fault(code, reason)
        status = 400 if code == "Sender" else 500
        return status, etree.tostring(env, xml_declaration=True, encoding="UTF-8"), (
            "application/soap+xml; charset=UTF-8")

    def _reply(self, msg: iti41.SoapMessage, body: etree._Element,
               attachments: dict[str, tuple[bytes, str]] | None = None
               ) -> tuple[int, bytes, str]:
        action = iti41.RESPONSE_ACTIONS[msg.action]
        env = iti41.envelope(action, "", body, relates_to=msg.message_id)
        if attachments is not None:
            data, ctype = iti41.mtom(env, attachments, action)
            return 200, data, ctype
        return 200, etree.tostring(env, xml_declaration=True, encoding="UTF-8"), (
            f'application/soap+xml; charset=UTF-8; action="{action}"')

    def _failure(self, msg: iti41.SoapMessage, errors: list[RegistryError]
                 ) -> tuple[int, bytes, str]:
        log.info("dmp-sim: %s refused: %s", msg.action.rsplit(":", 1)[-1],
                 ", ".join(e.code for e in errors))
        if msg.action == iti41.ITI18:  # each transaction fails in its own response type
            return self._reply(msg, adhoc_query_response([], errors=errors))
        if msg.action == iti41.ITI43:
            return self._reply(msg, retrieve_response([], errors)[0], {})
        return self._reply(msg, iti41.registry_response(iti41.FAILURE, errors))

    # ------------------------------------------------------------------ checks
    def _check_vihf(self, msg: iti41.SoapMessage, patient_cx: str) -> None:
        assertion = msg.security_assertion()
        if assertion is None:
            if self.state.require_vihf:
                raise Reject("XDSRegistryError", "jeton VIHF absent (wsse:Security/Assertion)")
            return
        try:
            attrs = (verify_assertion(assertion, self.state.trusted_cert)
                     if self.state.trusted_cert else assertion_attributes(assertion))
        except InvalidAssertion as exc:
            raise Reject("XDSRegistryError", str(exc)) from None
        self.state.vihf.append(attrs)
        for required in ("VIHF_Version", "Identifiant_Structure", "Secteur_Activite",
                         "urn:oasis:names:tc:xacml:2.0:subject:role",
                         "urn:oasis:names:tc:xacml:2.0:resource:resource-id", "Ressource_URN"):
            if not attrs.get(required):
                raise Reject("XDSRegistryError", f"VIHF : attribut {required} absent")
        if patient_cx and attrs["urn:oasis:names:tc:xacml:2.0:resource:resource-id"][0] != (
                patient_cx):
            raise Reject("XDSPatientIdDoesNotMatch",
                         "le patient du VIHF n'est pas celui des métadonnées")

    def _check_patient(self, patient_cx: str) -> None:
        ins, oid = _ins(patient_cx)
        if oid not in INS_OIDS or not patient_cx.endswith("^NH"):
            raise Reject("XDSRegistryMetadataError",
                         "patientId doit être l'INS avec son OID (…^^^&OID&ISO^NH)")
        if ins in self.state.unknown or (self.state.patients and ins not in
                                         self.state.patients and ins not in self.state.closed):
            raise Reject("XDSUnknownPatientId", "patient inconnu du DMP")
        if ins in self.state.closed:
            raise Reject("DMPClosed", "le DMP du patient est fermé")

    # ------------------------------------------------------------------ ITI-41
    def _iti41(self, msg: iti41.SoapMessage) -> tuple[int, bytes, str]:
        try:
            return self._provide(msg)
        except Reject as r:
            return self._failure(msg, [r.error])
        except SoapError as exc:
            return self._fault("Sender", str(exc))

    def _provide(self, msg: iti41.SoapMessage) -> tuple[int, bytes, str]:
        if msg.body.tag != f"{{{XDSB}}}ProvideAndRegisterDocumentSetRequest":
            raise SoapError("ProvideAndRegisterDocumentSetRequest attendu")
        inline = iti41.inline_attachments(msg.body, msg.attachments)
        errors = schema_errors(inline)
        if errors:
            raise Reject("XDSRegistryMetadataError", "schéma XDS.b : " + "; ".join(errors[:3]))
        ss_pid = msg.body.find(f".//{{{RIM}}}ExternalIdentifier[@identificationScheme="
                               f"'{SS_PATIENT_ID}']")
        patient_cx = ss_pid.get("value", "") if ss_pid is not None else ""
        self._check_vihf(msg, patient_cx)
        self._check_patient(patient_cx)
        docs = {d.get("id", ""): iti41.document_content(d, msg.attachments)
                for d in msg.body.findall(f"{{{XDSB}}}Document")}
        entries = msg.body.findall(f".//{{{RIM}}}ExtrinsicObject")
        if not entries:
            raise Reject("XDSRegistryMetadataError", "aucune fiche (ExtrinsicObject)")
        new: list[StoredDocument] = []
        for eo in entries:
            new.append(self._check_entry(eo, docs, patient_cx))
        to_deprecate: list[StoredDocument] = []
        for assoc in msg.body.iter(f"{{{RIM}}}Association"):
            if assoc.get("associationType") == RPLC:
                for d in new:
                    if d.entry_uuid == assoc.get("sourceObject"):
                        d.replaces = assoc.get("targetObject", "")
                target = self.state.documents.get(assoc.get("targetObject", ""))
                if target is None or target.status != APPROVED:
                    raise Reject("UnresolvedReferenceException",
                                 "RPLC : la fiche remplacée est inconnue ou n'est plus à jour",
                                 assoc.get("targetObject", ""))
                if target.patient_id != patient_cx:
                    raise Reject("XDSPatientIdDoesNotMatch",
                                 "RPLC : la fiche remplacée concerne un autre patient")
                to_deprecate.append(target)
        for t in to_deprecate:
            t.status = DEPRECATED  # ITI TF-3 §4.2.2.2.2: the replaced entry is deprecated
        for d in new:
            self.state.documents[d.entry_uuid] = d
        log.info("dmp-sim: ITI-41 accepted %d document(s)", len(new))
        return self._reply(msg, iti41.registry_response(iti41.SUCCESS))

    def _check_entry(self, eo: etree._Element, docs: dict[str, bytes], patient_cx: str
                     ) -> StoredDocument:
        eid = eo.get("id", "")

        def slot(name: str) -> str:
            return slot_value(eo, name)

        def ext(scheme: str) -> str:
            return external_id(eo, scheme)

        if ext(DE_PATIENT_ID) != patient_cx:
            raise Reject("XDSPatientIdDoesNotMatch",
                         "patientId de la fiche différent de celui du lot", eid)
        uid = ext(DE_UNIQUE_ID)
        if self.state.by_unique_id(uid):
            raise Reject("XDSDuplicateUniqueIdInRegistry", f"uniqueId déjà présent : {uid}", eid)
        for scheme, vs, label in (
                (DE_TYPE, "JDV_J07_XdsTypeCode_CISIS", "typeCode"),
                (DE_CONFIDENTIALITY, "JDV_J08_XdsConfidentialityCode_CISIS",
                 "confidentialityCode"),
                (DE_FACILITY, "JDV_J02_XdsHealthcareFacilityTypeCode_CISIS",
                 "healthcareFacilityTypeCode"),
                (DE_PRACTICE, "JDV_J04_XdsPracticeSettingCode_CISIS", "practiceSettingCode")):
            found = codes(eo, scheme)
            if not found:
                raise Reject("XDSRegistryMetadataError", f"{label} absent", eid)
            for c in found:
                if not in_value_set(vs, c):
                    raise Reject("XDSRegistryMetadataError",
                                 f"{label} {c.code} hors du jeu de valeurs {vs}", eid)
        content = docs.get(eid)
        if content is None:
            raise Reject("XDSMissingDocument", "document absent pour la fiche", eid)
        if slot("hash") and slot("hash").lower() != hashlib.sha1(content).hexdigest():
            raise Reject("XDSRepositoryMetadataError", "hash différent du document reçu", eid)
        if slot("size") and slot("size") != str(len(content)):
            raise Reject("XDSRepositoryMetadataError", "size différente du document reçu", eid)
        stored = copy(eo)
        stored.set("status", APPROVED)
        _set_slot(stored, "repositoryUniqueId", REPOSITORY_ID)
        _set_slot(stored, "hash", hashlib.sha1(content).hexdigest())
        _set_slot(stored, "size", str(len(content)))
        return StoredDocument(eid, uid, patient_cx, APPROVED, hashlib.sha1(content).hexdigest(),
                              etree.tostring(stored), content)

    # ------------------------------------------------------------------ ITI-18
    def _iti18(self, msg: iti41.SoapMessage) -> tuple[int, bytes, str]:
        try:
            q = read_adhoc_query(msg.body)
        except SoapError as exc:
            return self._fault("Sender", str(exc))
        self.state.queries.append(q)
        try:
            if self.state.refuse:
                raise Reject(self.state.refuse, "requête refusée par le DMP (dmp-sim --refuse)")
            if q.query_id == FIND_DOCUMENTS:
                found = self._find_documents(msg, q)
            elif q.query_id == GET_DOCUMENTS:
                uids = set(q.values("$XDSDocumentEntryUniqueId"))
                uuids = set(q.values("$XDSDocumentEntryEntryUUID"))
                found = [d for d in self.state.documents.values()
                         if d.unique_id in uids or d.entry_uuid in uuids]
                for d in found[:1]:
                    self._check_vihf(msg, d.patient_id)
            else:
                raise Reject("XDSUnknownStoredQuery", q.query_id)
        except Reject as r:
            return self._failure(msg, [r.error])
        entries = []
        for d in found:
            entry = read_document_entry(parse(d.metadata))
            entry.status = d.status
            entries.append(entry)
        return self._reply(msg, adhoc_query_response(entries, q.return_type))

    def _find_documents(self, msg: iti41.SoapMessage, q: StoredQuery) -> list[StoredDocument]:
        """FindDocuments with the filters ITI TF-2a §3.18.4.1.2.3.7.1 defines that a reader
        uses: status, codes (any of the values), creation and service times."""
        pid = q.first("$XDSDocumentEntryPatientId")
        if not pid:
            raise Reject("XDSRegistryError", "$XDSDocumentEntryPatientId absent")
        statuses = set(q.values("$XDSDocumentEntryStatus"))
        if not statuses:
            raise Reject("XDSRegistryError", "$XDSDocumentEntryStatus absent")
        self._check_vihf(msg, pid)
        self._check_patient(pid)
        wanted = {name: set(q.values(name)) for name in CODE_FILTERS if q.values(name)}
        out = []
        for d in self.state.documents.values():
            if d.patient_id != pid or d.status not in statuses:
                continue
            entry = read_document_entry(parse(d.metadata))
            if all(_entry_codes(entry, name) & values for name, values in wanted.items()) \
                    and _in_times(entry, q):
                out.append(d)
        return out

    # ------------------------------------------------------------------ ITI-43
    def _iti43(self, msg: iti41.SoapMessage) -> tuple[int, bytes, str]:
        try:
            requests = read_retrieve_request(msg.body)
        except SoapError as exc:
            return self._fault("Sender", str(exc))
        found: list[RetrievedDocument] = []
        errors: list[RegistryError] = []
        try:
            if self.state.refuse:
                raise Reject(self.state.refuse, "requête refusée par le DMP (dmp-sim --refuse)")
            for req in requests:
                if req.repository_id != REPOSITORY_ID:
                    errors.append(RegistryError("XDSUnknownRepositoryId",
                                                f"entrepôt inconnu : {req.repository_id}",
                                                location=req.unique_id))
                    continue
                docs = [d for d in self.state.by_unique_id(req.unique_id) if d.status != DELETED]
                if not docs:
                    errors.append(RegistryError("XDSMissingDocument",
                                                f"document inconnu : {req.unique_id}",
                                                location=req.unique_id))
                    continue
                self._check_vihf(msg, docs[0].patient_id)
                mime = read_document_entry(parse(docs[0].metadata)).mime_type
                found.append(RetrievedDocument(REPOSITORY_ID, req.unique_id,
                                               mime or "text/xml", docs[0].content))
        except Reject as r:
            return self._failure(msg, [r.error])
        body, attachments = retrieve_response(found, errors)
        return self._reply(msg, body, attachments)

    # ------------------------------------------------------------------ ITI-57
    def _iti57(self, msg: iti41.SoapMessage) -> tuple[int, bytes, str]:
        try:
            errors = schema_errors(msg.body)
            if errors:
                raise Reject("XDSRegistryMetadataError", "; ".join(errors[:3]))
            ss_pid = msg.body.find(f".//{{{RIM}}}ExternalIdentifier[@identificationScheme="
                                   f"'{SS_PATIENT_ID}']")
            patient_cx = ss_pid.get("value", "") if ss_pid is not None else ""
            self._check_vihf(msg, patient_cx)
            self._check_patient(patient_cx)
            changes = []
            for assoc in msg.body.iter(f"{{{RIM}}}Association"):
                if assoc.get("associationType") != UPDATE_STATUS:
                    continue
                target = self.state.documents.get(assoc.get("targetObject", ""))
                vals = {s.get("name"): (s.findtext(f".//{{{RIM}}}Value") or "")
                        for s in assoc.findall(f"{{{RIM}}}Slot")}
                if target is None:
                    raise Reject("UnresolvedReferenceException", "fiche inconnue",
                                 assoc.get("targetObject", ""))
                if target.patient_id != patient_cx:
                    raise Reject("XDSPatientIdDoesNotMatch", "fiche d'un autre patient")
                if vals.get("OriginalStatus") != target.status:
                    raise Reject("XDSMetadataUpdateError",
                                 "OriginalStatus ne correspond pas au statut de la fiche")
                changes.append((target, vals.get("NewStatus", "")))
            if not changes:
                raise Reject("XDSMetadataUpdateError", "aucune mise à jour de statut")
        except Reject as r:
            return self._failure(msg, [r.error])
        for target, status in changes:
            target.status = status
        log.info("dmp-sim: ITI-57 updated %d entry(ies)", len(changes))
        return self._reply(msg, iti41.registry_response(iti41.SUCCESS))


CODE_FILTERS = ("$XDSDocumentEntryClassCode", "$XDSDocumentEntryTypeCode",
                "$XDSDocumentEntryPracticeSettingCode",
                "$XDSDocumentEntryHealthcareFacilityTypeCode",
                "$XDSDocumentEntryConfidentialityCode", "$XDSDocumentEntryFormatCode",
                "$XDSDocumentEntryEventCodeList")


def _entry_codes(e: DocumentEntry, name: str) -> set[str]:
    """The entry's codes for one FindDocuments parameter, as code^^scheme."""
    by_param = {
        "$XDSDocumentEntryClassCode": [e.class_code],
        "$XDSDocumentEntryTypeCode": [e.type_code],
        "$XDSDocumentEntryPracticeSettingCode": [e.practice_setting],
        "$XDSDocumentEntryHealthcareFacilityTypeCode": [e.facility_type],
        "$XDSDocumentEntryConfidentialityCode": e.confidentiality,
        "$XDSDocumentEntryFormatCode": [e.format_code],
        "$XDSDocumentEntryEventCodeList": e.event_codes,
    }
    return {f"{c.code}^^{c.scheme}" for c in by_param[name]}


def _in_times(e: DocumentEntry, q: StoredQuery) -> bool:
    """From inclusive, To exclusive (ITI TF-2a §3.18.4.1.2.3.6), compared on the digits the
    query gives."""
    for attr, name in (("creation_time", "CreationTime"), ("service_start", "ServiceStartTime"),
                       ("service_stop", "ServiceStopTime")):
        value = getattr(e, attr)
        low, high = (q.first(f"$XDSDocumentEntry{name}From"),
                     q.first(f"$XDSDocumentEntry{name}To"))
        if (low or high) and not value:
            return False
        if low and value[:len(low)] < low:
            return False
        if high and value[:len(high)] >= high:
            return False
    return True


def _set_slot(eo: etree._Element, name: str, value: str) -> None:
    for s in eo.findall(f"{{{RIM}}}Slot[@name='{name}']"):
        eo.remove(s)
    slot = etree.Element(f"{{{RIM}}}Slot", name=name)
    etree.SubElement(etree.SubElement(slot, f"{{{RIM}}}ValueList"), f"{{{RIM}}}Value").text = value
    eo.insert(0, slot)


def create_app(sim: Simulator) -> Any:
    """The ASGI app: POST /dmp (alias /repository, /registry), GET /health."""
    app = FastAPI(title="Parcours DMP simulator", docs_url=None, redoc_url=None)

    async def endpoint(request: Request) -> Response:
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_REQUEST_BYTES:
            return Response(status_code=413)
        body = bytearray()
        async for chunk in request.stream():  # bounded read: never more than the limit
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                return Response(status_code=413)
        if sim.state.stall_seconds:
            await asyncio.sleep(sim.state.stall_seconds)
        status, data, ctype = sim.handle(bytes(body), request.headers.get("content-type", ""))
        return Response(content=data, status_code=status, media_type=ctype.split(";")[0],
                        headers={"Content-Type": ctype})

    for path in ("/dmp", "/repository", "/registry"):
        app.add_api_route(path, endpoint, methods=["POST"])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "documents": len(sim.state.documents)}

    return app
