"""TLS and mutual TLS for MLLP.

MLLP has no security of its own (HL7 MLLP transport spec, HL7 v2.5.1 Appendix C / MLLP
Release 2, leaves it to the layer below); patient data crossing a network must be encrypted,
and a listener that accepts results from several laboratories needs to know which one is
talking. Both come from TLS: server authentication with a certificate, client authentication
with mutual TLS, and an optional allow-list of client certificate subjects on the listener.

Contexts are built with TLS 1.2 as the floor: TLS 1.0 and 1.1 are deprecated (RFC 8996).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable, Sequence
from typing import Any

StrPath = str | os.PathLike[str]


def server_ssl_context(
    certfile: StrPath,
    keyfile: StrPath | None,
    *,
    cafile: StrPath | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """Context for an MLLP listener.

    With ``cafile`` the listener verifies client certificates issued by that CA when a client
    presents one; with ``require_client_cert`` as well, a client without a valid certificate
    fails the handshake (mutual TLS).
    """
    if require_client_cert and cafile is None:
        raise ValueError("require_client_cert needs cafile to verify client certificates")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    if cafile is not None:
        ctx.load_verify_locations(cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_ssl_context(
    cafile: StrPath | None,
    certfile: StrPath | None = None,
    keyfile: StrPath | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """Context for an MLLP sender.

    The server certificate is always verified (against ``cafile``, or the system store when
    it is None); ``check_hostname=False`` only relaxes the name check, for peers reached by
    an address their certificate does not list. ``certfile``/``keyfile`` present a client
    certificate for mutual TLS.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


# Attribute keywords of RFC 4514 section 3, keyed by the names OpenSSL gives in
# SSLSocket.getpeercert(); other common attributes are written as dotted OIDs, as RFC 4514
# requires (and as the ``cryptography`` package does, so strings compare equal).
_RFC4514_KEYWORDS = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
_KNOWN_OIDS = {
    "emailAddress": "1.2.840.113549.1.9.1",
    "serialNumber": "2.5.4.5",
    "surname": "2.5.4.4",
    "givenName": "2.5.4.42",
    "title": "2.5.4.12",
    "organizationIdentifier": "2.5.4.97",
}


def _escape(value: str) -> str:
    # RFC 4514 section 2.4: escape the special characters, a leading '#' or space, a
    # trailing space and NUL.
    if not value:
        return ""
    for char in ("\\", '"', "+", ",", ";", "<", ">"):
        value = value.replace(char, "\\" + char)
    value = value.replace("\0", "\\00")
    if value[0] in ("#", " "):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value


def subject_rfc4514(subject: Iterable[Iterable[tuple[str, str]]]) -> str:
    """RFC 4514 string of a subject as returned in ``getpeercert()["subject"]``.

    The certificate lists RDNs from the most general (C, O) to the most specific (CN);
    RFC 4514 writes them in reverse, which is the form operators copy from ``openssl x509
    -subject -nameopt RFC2253``.
    """
    rdns = []
    for rdn in subject:
        parts = []
        for name, value in rdn:
            key = _RFC4514_KEYWORDS.get(name) or _KNOWN_OIDS.get(name, name)
            parts.append(f"{key}={_escape(value)}")
        rdns.append("+".join(parts))
    return ",".join(reversed(rdns))


def subject_common_name(subject: Iterable[Iterable[tuple[str, str]]]) -> str | None:
    """The most specific CN of a subject, or None."""
    found = None
    for rdn in subject:
        for name, value in rdn:
            if name == "commonName":
                found = value
    return found


def peer_subject(ssl_object: Any) -> tuple[str, str | None] | None:
    """(RFC 4514 subject, CN) of the verified peer certificate, or None without one.

    ``getpeercert()`` only returns fields for a certificate that was verified, so a subject
    here is one the CA vouches for.
    """
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert or "subject" not in cert:
        return None
    subject = cert["subject"]
    return subject_rfc4514(subject), subject_common_name(subject)


def subject_allowed(subject: str, common_name: str | None, allowed: Sequence[str]) -> bool:
    """An entry matches the full RFC 4514 subject or just the CN, so an operator can write
    either ``lab-a`` or ``CN=lab-a,O=Lab A,C=FR`` in the allow-list."""
    for entry in allowed:
        if entry == subject or (common_name is not None and entry == common_name):
            return True
    return False
