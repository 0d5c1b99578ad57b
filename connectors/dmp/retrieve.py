"""ITI-43 Retrieve Document Set: requests and answers, documents as MTOM/XOP attachments.

IHE ITI TF-2b §3.43: the consumer names each document by repositoryUniqueId and
documentUniqueId (+ homeCommunityId across communities); the repository answers a
RegistryResponse (Success, PartialSuccess when some were found, Failure) and one
DocumentResponse per document found, the bytes travelling as an MTOM attachment
(§3.43.5, ITI TF-2x Appendix V). An unknown document is an XDSMissingDocument error whose
location is its uniqueId, an unknown repository XDSUnknownRepositoryId.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from lxml import etree

from .iti41 import (
    FAILURE,
    PARTIAL,
    RS,
    SUCCESS,
    XOP,
    RegistryError,
    RegistryResult,
    SoapError,
    document_content,
    read_registry_result,
    registry_response,
)
from .metadata import XDSB


@dataclass(frozen=True)
class DocumentRequest:
    repository_id: str
    unique_id: str
    home_community_id: str = ""


@dataclass(frozen=True)
class RetrievedDocument:
    repository_id: str
    unique_id: str
    mime_type: str
    content: bytes
    home_community_id: str = ""


@dataclass
class RetrieveResponse:
    result: RegistryResult
    documents: list[RetrievedDocument] = field(default_factory=list)

    def document(self, unique_id: str) -> RetrievedDocument | None:
        return next((d for d in self.documents if d.unique_id == unique_id), None)


def _text(parent: etree._Element, tag: str, value: str) -> None:
    if value:
        etree.SubElement(parent, f"{{{XDSB}}}{tag}").text = value


def retrieve_request(documents: list[DocumentRequest]) -> etree._Element:
    if not documents:
        raise ValueError("RetrieveDocumentSetRequest needs at least one document")
    req = etree.Element(f"{{{XDSB}}}RetrieveDocumentSetRequest", nsmap={"xdsb": XDSB})
    for d in documents:
        if not d.repository_id or not d.unique_id:
            raise ValueError("a document request needs its repositoryUniqueId and uniqueId")
        r = etree.SubElement(req, f"{{{XDSB}}}DocumentRequest")
        _text(r, "HomeCommunityId", d.home_community_id)
        _text(r, "RepositoryUniqueId", d.repository_id)
        _text(r, "DocumentUniqueId", d.unique_id)
    return req


def _field(el: etree._Element, tag: str) -> str:
    return (el.findtext(f"{{{XDSB}}}{tag}") or "").strip()


def read_retrieve_request(body: etree._Element) -> list[DocumentRequest]:
    if body.tag != f"{{{XDSB}}}RetrieveDocumentSetRequest":
        raise SoapError("RetrieveDocumentSetRequest attendu")
    return [DocumentRequest(_field(r, "RepositoryUniqueId"), _field(r, "DocumentUniqueId"),
                            _field(r, "HomeCommunityId"))
            for r in body.findall(f"{{{XDSB}}}DocumentRequest")]


def retrieve_response(documents: list[RetrievedDocument], errors: list[RegistryError]
                      ) -> tuple[etree._Element, dict[str, tuple[bytes, str]]]:
    """The response body and its attachments (Content-ID → (bytes, MIME type)), for
    `iti41.mtom`. The status follows what was found (ITI TF-2b §3.43.4.2.3)."""
    status = SUCCESS if not errors else (PARTIAL if documents else FAILURE)
    resp = etree.Element(f"{{{XDSB}}}RetrieveDocumentSetResponse",
                         nsmap={"xdsb": XDSB, "rs": RS, "xop": XOP})
    resp.append(registry_response(status, errors))
    attachments: dict[str, tuple[bytes, str]] = {}
    for n, d in enumerate(documents, 1):
        cid = f"doc{n}.{uuid.uuid4().hex}@parcours"
        attachments[cid] = (d.content, d.mime_type)
        dr = etree.SubElement(resp, f"{{{XDSB}}}DocumentResponse")
        _text(dr, "HomeCommunityId", d.home_community_id)
        _text(dr, "RepositoryUniqueId", d.repository_id)
        _text(dr, "DocumentUniqueId", d.unique_id)
        _text(dr, "mimeType", d.mime_type)
        etree.SubElement(etree.SubElement(dr, f"{{{XDSB}}}Document"), f"{{{XOP}}}Include",
                         href=f"cid:{cid}")
    return resp, attachments


def read_retrieve_response(body: etree._Element, attachments: dict[str, bytes]
                           ) -> RetrieveResponse:
    """The documents of a RetrieveDocumentSetResponse, attachments resolved (or base64)."""
    if body.tag != f"{{{XDSB}}}RetrieveDocumentSetResponse":
        raise SoapError(f"RetrieveDocumentSetResponse expected, got "
                        f"{etree.QName(body).localname}")
    docs = []
    for dr in body.findall(f"{{{XDSB}}}DocumentResponse"):
        doc = dr.find(f"{{{XDSB}}}Document")
        if doc is None:
            raise SoapError("DocumentResponse without Document")
        docs.append(RetrievedDocument(_field(dr, "RepositoryUniqueId"),
                                      _field(dr, "DocumentUniqueId"), _field(dr, "mimeType"),
                                      document_content(doc, attachments),
                                      _field(dr, "HomeCommunityId")))
    return RetrieveResponse(read_registry_result(body), docs)
