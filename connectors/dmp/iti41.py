"""SOAP 1.2 / WS-Addressing / MTOM-XOP framing of the XDS.b transactions the DMP speaks.

- ITI-41 Provide and Register Document Set-b (IHE ITI TF-2b §3.41): the document travels as
  an MTOM attachment referenced by xop:Include (ITI TF-2x Appendix V, W3C XOP), never inlined.
- ITI-57 Update Document Set (used by the DMP for logical deletion); the bodies of ITI-18
  and ITI-43 are in stored_query.py and retrieve.py, their envelopes here.

Both sides use these functions: the client builds requests and reads responses, the simulator
reads requests and builds responses. Parsing goes through the safe XML parser.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser

from lxml import etree

from safexml import copy as safe_copy
from safexml import parse as safe_parse

from .metadata import LCM, RIM, RS, XDSB

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
XOP = "http://www.w3.org/2004/08/xop/include"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"

ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
RESPONSE_ACTIONS = {ITI41: ITI41 + "Response", ITI18: ITI18 + "Response",
                    ITI43: ITI43 + "Response", ITI57: ITI57 + "Response"}
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class SoapError(ValueError):
    """A message that is not the SOAP/MTOM we expect (malformed, hostile, oversized)."""


# ---------------------------------------------------------------------------- envelope

def envelope(action: str, to: str, body: etree._Element, *, security: etree._Element | None =
             None, message_id: str | None = None, relates_to: str = "") -> etree._Element:
    """SOAP 1.2 envelope with the WS-Addressing headers IHE requires (ITI TF-2x §V.3.2)."""
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP, "wsa": WSA})
    header = etree.SubElement(env, f"{{{SOAP}}}Header")
    act = etree.SubElement(header, f"{{{WSA}}}Action")
    act.set(f"{{{SOAP}}}mustUnderstand", "true")
    act.text = action
    etree.SubElement(header, f"{{{WSA}}}MessageID").text = (
        message_id or f"urn:uuid:{uuid.uuid4()}")
    if relates_to:
        etree.SubElement(header, f"{{{WSA}}}RelatesTo").text = relates_to
    else:
        reply = etree.SubElement(header, f"{{{WSA}}}ReplyTo")
        etree.SubElement(reply, f"{{{WSA}}}Address").text = (
            "http://www.w3.org/2005/08/addressing/anonymous")
        to_el = etree.SubElement(header, f"{{{WSA}}}To")
        to_el.set(f"{{{SOAP}}}mustUnderstand", "true")
        to_el.text = to
    if security is not None:
        sec = etree.SubElement(header, f"{{{WSSE}}}Security", nsmap={"wsse": WSSE})
        sec.set(f"{{{SOAP}}}mustUnderstand", "true")
        sec.append(security)
    etree.SubElement(env, f"{{{SOAP}}}Body").append(body)
    return env


@dataclass
class SoapMessage:
    action: str
    message_id: str
    body: etree._Element  # first child of soap:Body
    header: etree._Element | None
    attachments: dict[str, bytes] = field(default_factory=dict)

    def security_assertion(self) -> etree._Element | None:
        if self.header is None:
            return None
        return self.header.find(f"{{{WSSE}}}Security/{{urn:oasis:names:tc:SAML:2.0:assertion}}"
                                "Assertion")


def read_envelope(root: etree._Element, attachments: dict[str, bytes] | None = None
                  ) -> SoapMessage:
    if root.tag != f"{{{SOAP}}}Envelope":
        raise SoapError(f"not a SOAP 1.2 envelope: {etree.QName(root).localname}")
    header = root.find(f"{{{SOAP}}}Header")
    body = root.find(f"{{{SOAP}}}Body")
    if body is None or len(body) == 0:
        raise SoapError("SOAP Body is empty")
    action = message_id = ""
    if header is not None:
        action = (header.findtext(f"{{{WSA}}}Action") or "").strip()
        message_id = (header.findtext(f"{{{WSA}}}MessageID") or "").strip()
    return SoapMessage(action, message_id, body[0], header, attachments or {})


# -------------------------------------------------------------------------------- MTOM

def mtom(env: etree._Element, attachments: dict[str, tuple[bytes, str]], action: str
         ) -> tuple[bytes, str]:
    """multipart/related MTOM package (W3C SOAP MTOM + XOP): root part first, then each
    attachment with its Content-ID. Returns (body, Content-Type header)."""
    boundary = f"MIMEBoundary_{uuid.uuid4().hex}"
    root_cid = f"root.{uuid.uuid4().hex}@parcours"
    xml = etree.tostring(env, xml_declaration=True, encoding="UTF-8")
    parts = [
        f"--{boundary}\r\nContent-Type: application/xop+xml; charset=UTF-8; "
        f'type="application/soap+xml"\r\nContent-Transfer-Encoding: binary\r\n'
        f"Content-ID: <{root_cid}>\r\n\r\n".encode() + xml + b"\r\n"
    ]
    for cid, (data, ctype) in attachments.items():
        parts.append(
            f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: <{cid}>\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    ctype = (f'multipart/related; type="application/xop+xml"; boundary="{boundary}"; '
             f'start="<{root_cid}>"; start-info="application/soap+xml"; action="{action}"')
    return body, ctype


def _param(ctype: str, name: str) -> str:
    m = re.search(rf'{name}\s*=\s*"([^"]*)"', ctype, re.I) or re.search(
        rf"{name}\s*=\s*([^;\s]+)", ctype, re.I)
    return m.group(1) if m else ""


def read_message(body: bytes, content_type: str, max_bytes: int = MAX_MESSAGE_BYTES
                 ) -> SoapMessage:
    """A SOAP message, plain or MTOM. xop:Include elements are left in place; their content is
    in `attachments`, keyed by Content-ID (without 'cid:' and angle brackets)."""
    if len(body) > max_bytes:
        raise SoapError(f"message of {len(body)} bytes exceeds the limit of {max_bytes}")
    if "multipart/related" not in content_type.lower():
        return read_envelope(_parse(body))
    boundary = _param(content_type, "boundary")
    if not boundary:
        raise SoapError("multipart/related without a boundary")
    start = _param(content_type, "start").strip("<>")
    chunks = body.split(b"--" + boundary.encode())
    parts: list[tuple[dict[str, str], bytes]] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.lstrip(b"\n")
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = chunk.partition(b"\n\n")
        if not sep:
            raise SoapError("MIME part without headers")
        headers = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        parts.append(({k.lower(): v for k, v in headers.items()}, content))
    if not parts:
        raise SoapError("multipart/related message without parts")
    root_part = parts[0]
    for p in parts:
        if start and p[0].get("content-id", "").strip("<>") == start:
            root_part = p
    attachments = {p[0].get("content-id", "").strip().strip("<>"): p[1]
                   for p in parts if p is not root_part}
    return read_envelope(_parse(root_part[1]), attachments)


def _parse(data: bytes) -> etree._Element:
    try:
        return safe_parse(data, MAX_MESSAGE_BYTES)
    except ValueError as exc:
        raise SoapError(str(exc)) from None


def inline_attachments(body: etree._Element, attachments: dict[str, bytes]) -> etree._Element:
    """A copy where each xop:Include is replaced by the base64 of its attachment: the form the
    XDS.b schema validates (xs:base64Binary)."""
    copy = safe_copy(body)
    for inc in copy.iter(f"{{{XOP}}}Include"):
        cid = (inc.get("href") or "").removeprefix("cid:")
        from urllib.parse import unquote

        data = attachments.get(cid, attachments.get(unquote(cid)))
        if data is None:
            raise SoapError(f"xop:Include refers to a missing attachment {cid}")
        parent = inc.getparent()
        assert parent is not None
        parent.remove(inc)
        parent.text = base64.b64encode(data).decode("ascii")
    return copy


def document_content(doc: etree._Element, attachments: dict[str, bytes]) -> bytes:
    inc = doc.find(f"{{{XOP}}}Include")
    if inc is not None:
        cid = (inc.get("href") or "").removeprefix("cid:")
        if cid not in attachments:
            raise SoapError(f"xop:Include refers to a missing attachment {cid}")
        return attachments[cid]
    try:
        return base64.b64decode("".join((doc.text or "").split()), validate=True)
    except ValueError:
        raise SoapError("Document is neither an xop:Include nor valid base64") from None


# ---------------------------------------------------------------------------- requests

def provide_and_register(sor: etree._Element, documents: dict[str, str]
                         ) -> etree._Element:
    """xdsb:ProvideAndRegisterDocumentSetRequest; documents maps entryUUID → Content-ID."""
    req = etree.Element(f"{{{XDSB}}}ProvideAndRegisterDocumentSetRequest",
                        nsmap={"xdsb": XDSB, "xop": XOP})
    req.append(sor)
    for entry_uuid, cid in documents.items():
        d = etree.SubElement(req, f"{{{XDSB}}}Document", id=entry_uuid)
        etree.SubElement(d, f"{{{XOP}}}Include", href=f"cid:{cid}")
    return req


# --------------------------------------------------------------------------- responses

@dataclass(frozen=True)
class RegistryError:
    code: str
    context: str
    severity: str = ERROR
    location: str = ""

    def __str__(self) -> str:
        return f"{self.code}: {self.context}" if self.context else self.code


@dataclass
class RegistryResult:
    status: str
    errors: list[RegistryError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    def summary(self) -> str:
        short = self.status.rsplit(":", 1)[-1]
        if not self.errors:
            return short
        return f"{short}: " + "; ".join(str(e) for e in self.errors[:5])


def registry_response(status: str, errors: list[RegistryError] = ()  # type: ignore[assignment]
                      ) -> etree._Element:
    resp = etree.Element(f"{{{RS}}}RegistryResponse", nsmap={"rs": RS}, status=status)
    append_errors(resp, errors)
    return resp


def append_errors(parent: etree._Element, errors: list[RegistryError]) -> None:
    """rs:RegistryErrorList (ebRS 3.0 RegistryResponseType), nothing when there are none."""
    if errors:
        lst = etree.SubElement(parent, f"{{{RS}}}RegistryErrorList")
        for e in errors:
            etree.SubElement(lst, f"{{{RS}}}RegistryError", errorCode=e.code,
                             codeContext=e.context, severity=e.severity,
                             location=e.location or "")


def read_registry_result(el: etree._Element) -> RegistryResult:
    """RegistryResponse, AdhocQueryResponse or RetrieveDocumentSetResponse → status + errors."""
    if el.tag == f"{{{XDSB}}}RetrieveDocumentSetResponse":
        rr = el.find(f"{{{RS}}}RegistryResponse")
        el = rr if rr is not None else el
    errors = [
        RegistryError(e.get("errorCode", ""), e.get("codeContext", ""),
                      e.get("severity", ERROR), e.get("location", ""))
        for e in el.iter(f"{{{RS}}}RegistryError")
    ]
    return RegistryResult(el.get("status", FAILURE), errors)


def soap_fault(code: str, reason: str) -> etree._Element:
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP})
    body = etree.SubElement(env, f"{{{SOAP}}}Body")
    fault = etree.SubElement(body, f"{{{SOAP}}}Fault")
    c = etree.SubElement(fault, f"{{{SOAP}}}Code")
    etree.SubElement(c, f"{{{SOAP}}}Value").text = f"soap:{code}"
    r = etree.SubElement(fault, f"{{{SOAP}}}Reason")
    t = etree.SubElement(r, f"{{{SOAP}}}Text")
    t.set("{http://www.w3.org/XML/1998/namespace}lang", "fr")
    t.text = reason
    return env


def fault_reason(body: etree._Element) -> str | None:
    if body.tag != f"{{{SOAP}}}Fault":
        return None
    return " ".join((body.findtext(f".//{{{SOAP}}}Text") or "SOAP fault").split())


__all__ = ["LCM", "RIM", "RS", "XDSB"]
