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
Malformed or hostile messages get a SOAP Sender fault (HTTP 400); no patient data is logged.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from lxml import etree

from safexml import copy, parse

from . import iti41
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
    Code,
    in_value_set,
    schema_errors,
)
from .saml import InvalidAssertion, assertion_attributes, verify_assertion

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
    fail_next: list[str] = field(default_factory=list)  # "busy", "http503" (tests, rehearsal)
    received: list[str] = field(default_factory=list)  # actions received, for tests
    vihf: list[dict[str, list[str]]] = field(default_factory=list)  # VIHF attributes seen
    lock: threading.Lock = field(default_factory=threading.Lock)

    def by_unique_id(self, uid: str) -> list[StoredDocument]:
        return [d for d in self.documents.values() if d.unique_id == uid]


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
            return self._reply(msg, iti41.registry_response(iti41.FAILURE, [RegistryError(
                "XDSRegistryBusy", "registre momentanément indisponible")]))
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
            v = eo.find(f"{{{RIM}}}Slot[@name='{name}']/{{{RIM}}}ValueList/{{{RIM}}}Value")
            return (v.text or "") if v is not None else ""

        def ext(scheme: str) -> str:
            e = eo.find(f"{{{RIM}}}ExternalIdentifier[@identificationScheme='{scheme}']")
            return e.get("value", "") if e is not None else ""

        def codes(scheme: str) -> list[Code]:
            out = []
            for c in eo.findall(f"{{{RIM}}}Classification[@classificationScheme='{scheme}']"):
                v = c.find(f"{{{RIM}}}Slot[@name='codingScheme']/{{{RIM}}}ValueList/"
                           f"{{{RIM}}}Value")
                out.append(Code(c.get("nodeRepresentation", ""),
                                (v.text or "") if v is not None else ""))
            return out

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
            found = codes(scheme)
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
        q = msg.body.find(f"{{{RIM}}}AdhocQuery")
        if q is None:
            return self._fault("Sender", "AdhocQueryRequest attendu")
        params: dict[str, list[str]] = {}
        for s in q.findall(f"{{{RIM}}}Slot"):
            values = []
            for v in s.iter(f"{{{RIM}}}Value"):
                values += [x.strip().strip("'") for x in (v.text or "").strip("()").split(",")]
            params[s.get("name", "")] = values
        qid = q.get("id", "")
        if qid == iti41.FIND_DOCUMENTS:
            pid = (params.get("$XDSDocumentEntryPatientId") or [""])[0]
            try:
                self._check_vihf(msg, pid)
                self._check_patient(pid)
            except Reject as r:
                return self._failure(msg, [r.error])
            statuses = set(params.get("$XDSDocumentEntryStatus") or [APPROVED])
            found = [d for d in self.state.documents.values()
                     if d.patient_id == pid and d.status in statuses]
        elif qid == iti41.GET_DOCUMENTS:
            uids = set(params.get("$XDSDocumentEntryUniqueId") or [])
            uuids = set(params.get("$XDSDocumentEntryEntryUUID") or [])
            found = [d for d in self.state.documents.values()
                     if d.unique_id in uids or d.entry_uuid in uuids]
            try:
                for d in found[:1]:
                    self._check_vihf(msg, d.patient_id)
            except Reject as r:
                return self._failure(msg, [r.error])
        else:
            return self._failure(msg, [RegistryError("XDSUnknownStoredQuery", qid)])
        resp = etree.Element(f"{{{iti41.QUERY}}}AdhocQueryResponse",
                             nsmap={"query": iti41.QUERY, "rim": RIM}, status=iti41.SUCCESS)
        rol = etree.SubElement(resp, f"{{{RIM}}}RegistryObjectList")
        for d in found:
            eo = parse(d.metadata)
            eo.set("status", d.status)
            rol.append(eo)
        return self._reply(msg, resp)

    # ------------------------------------------------------------------ ITI-43
    def _iti43(self, msg: iti41.SoapMessage) -> tuple[int, bytes, str]:
        resp = etree.Element(f"{{{XDSB}}}RetrieveDocumentSetResponse",
                             nsmap={"xdsb": XDSB, "rs": iti41.RS, "xop": iti41.XOP})
        attachments: dict[str, tuple[bytes, str]] = {}
        errors: list[RegistryError] = []
        for req in msg.body.findall(f"{{{XDSB}}}DocumentRequest"):
            uid = (req.findtext(f"{{{XDSB}}}DocumentUniqueId") or "").strip()
            docs = [d for d in self.state.by_unique_id(uid) if d.status != DELETED]
            if not docs:
                errors.append(RegistryError("XDSMissingDocument", f"document inconnu : {uid}"))
                continue
            cid = f"doc{len(attachments) + 1}@dmp-sim"
            attachments[cid] = (docs[0].content, "text/xml")
        status = iti41.SUCCESS if not errors else (iti41.PARTIAL if attachments
                                                   else iti41.FAILURE)
        resp.append(iti41.registry_response(status, errors))
        for i, (cid, _) in enumerate(attachments.items()):
            doc_uid = [d for d in msg.body.iter(f"{{{XDSB}}}DocumentUniqueId")][i].text or ""
            dr = etree.SubElement(resp, f"{{{XDSB}}}DocumentResponse")
            etree.SubElement(dr, f"{{{XDSB}}}RepositoryUniqueId").text = REPOSITORY_ID
            etree.SubElement(dr, f"{{{XDSB}}}DocumentUniqueId").text = doc_uid.strip()
            etree.SubElement(dr, f"{{{XDSB}}}mimeType").text = "text/xml"
            d = etree.SubElement(dr, f"{{{XDSB}}}Document")
            etree.SubElement(d, f"{{{iti41.XOP}}}Include", href=f"cid:{cid}")
        return self._reply(msg, resp, attachments)

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
        status, data, ctype = sim.handle(bytes(body), request.headers.get("content-type", ""))
        return Response(content=data, status_code=status, media_type=ctype.split(";")[0],
                        headers={"Content-Type": ctype})

    for path in ("/dmp", "/repository", "/registry"):
        app.add_api_route(path, endpoint, methods=["POST"])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "documents": len(sim.state.documents)}

    return app
