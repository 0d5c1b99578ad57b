"""ITI-41 / ITI-18 / ITI-43 / ITI-57 client for the DMP (httpx, TLS with a client certificate).

Transport apart from policy (style anchors, httpx): this client sends one transaction and says
what came back; the `dmp` destination decides what to submit, and whether an answer means
delivered, retry or dead. `transient()` is the one place that says which answers are worth a
retry: network errors, HTTP 5xx/408/429, and the XDS "busy / out of resources" codes
(ITI TF-3 Table 4.2.4.1-2). Everything else is the DMP telling us the request is wrong.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from lxml import etree

from . import iti41
from .iti41 import RegistryError, RegistryResult, SoapError
from .metadata import DocumentEntry, SubmissionSet, submit_objects_request, update_status_request
from .retrieve import DocumentRequest, RetrieveResponse, read_retrieve_response, retrieve_request
from .saml import VIHFIdentity, build_assertion, coded
from .stored_query import (
    FindDocuments,
    QueryResponse,
    find_documents_request,
    get_documents_request,
    read_query_response,
)

TRANSIENT_CODES = frozenset({
    "XDSRegistryBusy", "XDSRepositoryBusy", "XDSRegistryOutOfResources",
    "XDSRepositoryOutOfResources", "XDSRegistryNotAvailable", "TransportError",
})


class DMPUnavailable(Exception):
    """The DMP could not be reached or answered with a server error: try again later.

    `code` says which, in the form stored as the delivery's error code ("HTTP503",
    "ConnectError", ...), so transport failures can be told apart from the DMP's refusals.
    """

    def __init__(self, message: str, code: str = "TransportError") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class DMPConfig:
    repository_url: str
    registry_url: str = ""  # ITI-18 / ITI-57 endpoint; the repository's when empty
    repository_unique_id: str = ""
    source_id: str = "1.2.250.1.213.1.1.9.999"  # SubmissionSet.sourceId (OID of this feed)
    submission_oid: str = "1.2.250.1.213.1.1.9.996"  # root of SubmissionSet.uniqueId
    tls_cert: str = ""  # client certificate (PEM) for mutual TLS
    tls_key: str = ""
    tls_ca: str = ""  # CA bundle that signs the DMP's server certificate
    signing_cert: str = ""  # VIHF signing certificate ("certificat de cachet"), PEM
    signing_key: str = ""
    identity: VIHFIdentity = field(default_factory=lambda: VIHFIdentity(
        name_id="parcours", subject_name="Parcours, moteur d'intégration",
        structure_id="1000000000"))
    timeout: float = 60.0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> DMPConfig:
        ident = dict(options.get("identity") or {})
        identity = VIHFIdentity(
            name_id=ident.get("name_id", "parcours"),
            subject_name=ident.get("subject_name", "Parcours, moteur d'intégration"),
            structure_id=ident.get("structure_id", "1000000000"),
            sector=ident.get("sector", "SA25^1.2.250.1.71.4.2.4"),
            lps_name=ident.get("lps_name", "Parcours"),
            lps_version=ident.get("lps_version", "0.1"),
            lps_homologation=ident.get("lps_homologation", ""),
            lps_id=ident.get("lps_id", ""),
            vihf_version=str(ident.get("vihf_version", VIHFIdentity.vihf_version)),
        )
        if ident.get("secret_connection_code"):
            identity.secret_connection = coded(str(ident["secret_connection_code"]))
        tls = options.get("tls") or {}
        sign = options.get("signing") or {}
        return cls(
            repository_url=options["url"],
            registry_url=options.get("registry_url", ""),
            repository_unique_id=options.get("repository_unique_id", ""),
            source_id=options.get("source_id", cls.source_id),
            submission_oid=options.get("submission_oid", cls.submission_oid),
            tls_cert=tls.get("cert", ""), tls_key=tls.get("key", ""), tls_ca=tls.get("ca", ""),
            signing_cert=sign.get("cert", ""), signing_key=sign.get("key", ""),
            identity=identity, timeout=float(options.get("timeout", 60.0)),
        )


def transient(result: RegistryResult) -> bool:
    return bool(result.errors) and all(e.code in TRANSIENT_CODES for e in result.errors)


class DMPClient:
    def __init__(self, config: DMPConfig) -> None:
        self.config = config
        ctx = ssl.create_default_context(cafile=config.tls_ca or None)
        if config.tls_cert and config.tls_key:  # mutual TLS: the DMP authenticates the caller
            ctx.load_cert_chain(config.tls_cert, config.tls_key)
        self._http = httpx.AsyncClient(timeout=config.timeout, verify=ctx)
        self._sign_cert = Path(config.signing_cert).read_bytes() if config.signing_cert else b""
        self._sign_key = Path(config.signing_key).read_bytes() if config.signing_key else b""

    async def close(self) -> None:
        await self._http.aclose()

    def _assertion(self, patient_cx: str, secret: bool = False,
                   identity: VIHFIdentity | None = None) -> etree._Element | None:
        """`secret`: the sender asked for the DMP's secret connection (MetaDMPMSS
        CONNEXION_SECRETE=Y); the VIHF then carries the confidentiality-code attribute."""
        if not self._sign_cert:
            return None
        return build_assertion(identity or self.config.identity, patient_cx, self._sign_cert,
                               self._sign_key, confidential_access=secret)

    async def _post(self, url: str, content: bytes, content_type: str) -> iti41.SoapMessage:
        try:
            r = await self._http.post(url, content=content, headers={
                "Content-Type": content_type})
        except httpx.HTTPError as exc:
            raise DMPUnavailable(f"{type(exc).__name__}: {exc}", type(exc).__name__) from None
        if r.status_code >= 500 or r.status_code in (408, 429):
            # SOAP 1.2 HTTP binding: Receiver faults come with 500 — the DMP's problem, retry.
            raise DMPUnavailable(f"HTTP {r.status_code}", f"HTTP{r.status_code}")
        msg = iti41.read_message(r.content, r.headers.get("content-type", ""))
        reason = iti41.fault_reason(msg.body)
        if reason:  # Sender fault (HTTP 400): the request itself is wrong
            raise SoapError(f"DMP answered a SOAP fault: {reason}")
        if r.status_code >= 400:
            raise SoapError(f"DMP answered HTTP {r.status_code}")
        return msg

    async def provide_and_register(self, cda: bytes, entry: DocumentEntry,
                                   sset: SubmissionSet, replaces_entry_uuid: str = "", *,
                                   secret: bool = False) -> RegistryResult:
        """ITI-41: the CDA as an MTOM attachment (text/xml), metadata in the SOAP body."""
        sor = submit_objects_request(sset, entry, replaces_entry_uuid)
        cid = f"doc.{uuid.uuid4().hex}@parcours"
        body = iti41.provide_and_register(sor, {entry.entry_uuid: cid})
        env = iti41.envelope(iti41.ITI41, self.config.repository_url, body,
                             security=self._assertion(entry.patient_id, secret))
        data, ctype = iti41.mtom(env, {cid: (cda, "text/xml")}, iti41.ITI41)
        msg = await self._post(self.config.repository_url, data, ctype)
        return iti41.read_registry_result(msg.body)

    async def _query(self, request: etree._Element, patient_cx: str, *, secret: bool = False,
                     identity: VIHFIdentity | None = None) -> QueryResponse:
        url = self.config.registry_url or self.config.repository_url
        env = iti41.envelope(iti41.ITI18, url, request,
                             security=self._assertion(patient_cx, secret, identity))
        msg = await self._post(url, etree.tostring(env, xml_declaration=True, encoding="UTF-8"),
                               f'application/soap+xml; charset=UTF-8; action="{iti41.ITI18}"')
        return read_query_response(msg.body)

    async def get_documents(self, patient_cx: str, unique_id: str, *, secret: bool = False
                            ) -> tuple[RegistryResult, list[DocumentEntry]]:
        """ITI-18 GetDocuments by uniqueId: finds the entry a replacement or deletion targets."""
        r = await self._query(get_documents_request([unique_id]), patient_cx, secret=secret)
        return r.result, r.entries

    async def find_documents(self, query: FindDocuments, *,
                             identity: VIHFIdentity | None = None) -> QueryResponse:
        """ITI-18 FindDocuments; `identity`: the VIHF subject when a professional reads
        (saml.reader_identity), else the feed's own."""
        return await self._query(find_documents_request(query), query.patient_id,
                                 identity=identity)

    async def update_status(self, sset: SubmissionSet, entry_uuid: str, original: str,
                            new: str, *, secret: bool = False) -> RegistryResult:
        """ITI-57 with UpdateAvailabilityStatus (the DMP's logical deletion, CI-SIS TD3.3c)."""
        url = self.config.registry_url or self.config.repository_url
        env = iti41.envelope(iti41.ITI57, url, update_status_request(sset, entry_uuid,
                                                                      original, new),
                             security=self._assertion(sset.patient_id, secret))
        msg = await self._post(url, etree.tostring(env, xml_declaration=True, encoding="UTF-8"),
                               f'application/soap+xml; charset=UTF-8; action="{iti41.ITI57}"')
        return iti41.read_registry_result(msg.body)

    async def retrieve(self, patient_cx: str, documents: list[DocumentRequest], *,
                       identity: VIHFIdentity | None = None) -> RetrieveResponse:
        """ITI-43 Retrieve Document Set; the VIHF names the patient the documents are of."""
        env = iti41.envelope(iti41.ITI43, self.config.repository_url,
                             retrieve_request(documents),
                             security=self._assertion(patient_cx, identity=identity))
        msg = await self._post(self.config.repository_url,
                               etree.tostring(env, xml_declaration=True, encoding="UTF-8"),
                               f'application/soap+xml; charset=UTF-8; action="{iti41.ITI43}"')
        return read_retrieve_response(msg.body, msg.attachments)


__all__ = ["DMPClient", "DMPConfig", "DMPUnavailable", "RegistryError", "RegistryResult",
           "transient"]
