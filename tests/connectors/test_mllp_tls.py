"""TLS and mutual TLS on the MLLP listener and sender, with certificates made by trustme."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509

from connectors.mllp import (
    Frame,
    FrameDecoder,
    MLLPClient,
    MLLPConnectionError,
    MLLPError,
    MLLPServer,
    Peer,
    client_ssl_context,
    frame,
    server_ssl_context,
)

pytestmark = pytest.mark.timeout(60)


@dataclass
class Pki:
    tmp: Path
    ca: trustme.CA
    cafile: str
    server_cert: str
    server_key: str
    issued: int = 0

    def client_cert(self, name: str, ca: trustme.CA | None = None, **kw: Any) -> tuple[str, str]:
        self.issued += 1
        leaf = (ca or self.ca).issue_cert(
            f"client{self.issued}.example", common_name=name, **kw
        )
        cert = self.tmp / f"client{self.issued}.pem"
        key = self.tmp / f"client{self.issued}.key"
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        return str(cert), str(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(tmp / "ca.pem")
    server.cert_chain_pems[0].write_to_path(tmp / "server.pem")
    server.private_key_pem.write_to_path(tmp / "server.key")
    return Pki(tmp, ca, str(tmp / "ca.pem"), str(tmp / "server.pem"), str(tmp / "server.key"))


def subject_of(certfile: str) -> str:
    return x509.load_pem_x509_certificate(Path(certfile).read_bytes()).subject.rfc4514_string()


class Recorder:
    def __init__(self) -> None:
        self.peers: list[Peer] = []

    async def __call__(self, payload: bytes, peer: Peer) -> bytes:
        self.peers.append(peer)
        return b"ACK|" + payload


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def start(pki: Pki, handler: Any, *, mtls: bool, **options: Any) -> MLLPServer:
    ctx = server_ssl_context(
        pki.server_cert,
        pki.server_key,
        cafile=pki.cafile if mtls else None,
        require_client_cert=mtls,
    )
    server = MLLPServer(handler, host="127.0.0.1", port=0, ssl_context=ctx, **options)
    await server.start()
    return server


def test_contexts_enforce_tls_12_and_client_cert_needs_a_ca(pki: Pki) -> None:
    ctx = server_ssl_context(pki.server_cert, pki.server_key)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    mtls = server_ssl_context(
        pki.server_cert, pki.server_key, cafile=pki.cafile, require_client_cert=True
    )
    assert mtls.verify_mode == ssl.CERT_REQUIRED
    client = client_ssl_context(pki.cafile)
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    with pytest.raises(ValueError):
        server_ssl_context(pki.server_cert, pki.server_key, require_client_cert=True)
    with pytest.raises(ValueError):
        MLLPServer(Recorder(), allowed_subjects=["lab-a"])


async def test_tls_round_trip(pki: Pki) -> None:
    recorder = Recorder()
    server = await start(pki, recorder, mtls=False)
    try:
        async with MLLPClient("127.0.0.1", server.port, ssl_context=client_ssl_context(
            pki.cafile
        )) as client:
            assert await client.send(b"MSH|tls") == b"ACK|MSH|tls"
            assert await client.send_many([b"a", b"b"], window=2) == [b"ACK|a", b"ACK|b"]
        assert recorder.peers[0].tls_subject is None
    finally:
        await server.close()


async def test_plaintext_client_on_tls_listener_is_refused(pki: Pki) -> None:
    server = await start(pki, Recorder(), mtls=False)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(frame(b"MSH|plain"))
        async with asyncio.timeout(5):
            data = await reader.read()
        assert FrameDecoder().feed(data) == []  # no reply frame, just closed
        await wait_until(lambda: server.stats.tls_handshake_failed == 1)
        assert server.stats.frames_received == 0
        writer.close()
    finally:
        await server.close()


async def test_client_refuses_untrusted_server(pki: Pki, tmp_path: Path) -> None:
    other = trustme.CA()
    other.cert_pem.write_to_path(tmp_path / "other-ca.pem")
    server = await start(pki, Recorder(), mtls=False)
    try:
        ctx = client_ssl_context(str(tmp_path / "other-ca.pem"))
        client = MLLPClient("127.0.0.1", server.port, ssl_context=ctx)
        with pytest.raises(MLLPConnectionError):
            await client.send(b"x")
    finally:
        await server.close()


async def test_mtls_client_without_certificate_fails(pki: Pki) -> None:
    recorder = Recorder()
    server = await start(pki, recorder, mtls=True)
    try:
        client = MLLPClient(
            "127.0.0.1", server.port, ssl_context=client_ssl_context(pki.cafile), ack_timeout=5
        )
        with pytest.raises(MLLPConnectionError):
            await client.send(b"MSH|anonymous")
        await wait_until(lambda: server.stats.tls_handshake_failed == 1)
        assert recorder.peers == []
        await client.close()
    finally:
        await server.close()


async def test_mtls_client_cert_from_another_ca_fails(pki: Pki) -> None:
    recorder = Recorder()
    server = await start(pki, recorder, mtls=True)
    try:
        cert, key = pki.client_cert("lab-a", ca=trustme.CA())
        ctx = client_ssl_context(pki.cafile, cert, key)
        client = MLLPClient("127.0.0.1", server.port, ssl_context=ctx, ack_timeout=5)
        with pytest.raises(MLLPConnectionError):
            await client.send(b"MSH|forged")
        assert recorder.peers == []
        await client.close()
    finally:
        await server.close()


async def test_mtls_subject_not_in_allow_list_is_closed(pki: Pki) -> None:
    recorder = Recorder()
    server = await start(pki, recorder, mtls=True, allowed_subjects=["lab-a"])
    try:
        cert, key = pki.client_cert("intruder")
        ctx = client_ssl_context(pki.cafile, cert, key)
        client = MLLPClient("127.0.0.1", server.port, ssl_context=ctx, ack_timeout=5)
        with pytest.raises(MLLPConnectionError):
            await client.send(b"MSH|intruder")
        assert server.stats.tls_rejected == 1
        assert server.stats.frames_received == 0
        assert recorder.peers == []
        await client.close()
    finally:
        await server.close()


async def test_mtls_allowed_by_common_name(pki: Pki) -> None:
    recorder = Recorder()
    server = await start(pki, recorder, mtls=True, allowed_subjects=["lab-b", "lab-a"])
    try:
        cert, key = pki.client_cert("lab-a")
        ctx = client_ssl_context(pki.cafile, cert, key)
        async with MLLPClient("127.0.0.1", server.port, ssl_context=ctx) as client:
            assert await client.send(b"MSH|lab-a") == b"ACK|MSH|lab-a"
        assert recorder.peers[0].tls_subject == subject_of(cert)
        assert server.stats.tls_rejected == 0
    finally:
        await server.close()


async def test_mtls_frames_sent_with_the_handshake_are_kept_in_order(pki: Pki) -> None:
    """A sender that writes its frames the moment the handshake completes: the first ones
    can arrive before the certificate subject is checked; they wait for it, none is lost."""
    recorder = Recorder()
    server = await start(pki, recorder, mtls=True, allowed_subjects=["lab-a"])
    try:
        cert, key = pki.client_cert("lab-a")
        ctx = client_ssl_context(pki.cafile, cert, key)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=ctx, server_hostname="localhost"
        )
        payloads = [b"MSH|%d" % i for i in range(50)]
        writer.write(b"".join(frame(p) for p in payloads))
        decoder, replies = FrameDecoder(), []
        async with asyncio.timeout(10):
            while len(replies) < len(payloads):
                data = await reader.read(65536)
                assert data, "server closed the connection"
                replies += [e.payload for e in decoder.feed(data) if isinstance(e, Frame)]
        assert replies == [b"ACK|" + p for p in payloads]
        assert {p.tls_subject for p in recorder.peers} == {subject_of(cert)}
        writer.close()
    finally:
        await server.close()


async def test_mtls_allowed_by_full_subject_only(pki: Pki) -> None:
    cert, key = pki.client_cert("lab-c", organization_name="Lab C")
    full = subject_of(cert)
    assert full.startswith("CN=lab-c,")
    recorder = Recorder()
    # A partial subject is neither the full string nor the CN: not a match.
    server = await start(pki, recorder, mtls=True, allowed_subjects=["CN=lab-c,O=Lab C"])
    try:
        ctx = client_ssl_context(pki.cafile, cert, key)
        with pytest.raises(MLLPError):
            await MLLPClient("127.0.0.1", server.port, ssl_context=ctx, ack_timeout=5).send(b"x")
        assert server.stats.tls_rejected == 1
    finally:
        await server.close()
    server = await start(pki, recorder, mtls=True, allowed_subjects=[full])
    try:
        ctx = client_ssl_context(pki.cafile, cert, key)
        async with MLLPClient("127.0.0.1", server.port, ssl_context=ctx) as client:
            assert await client.send(b"MSH|lab-c") == b"ACK|MSH|lab-c"
        assert recorder.peers[-1].tls_subject == full
    finally:
        await server.close()


async def test_subject_string_escapes_like_rfc_4514(pki: Pki) -> None:
    name = '#Lab "A", Inc+Co; <x> '
    cert, key = pki.client_cert(name, organization_name="Biologie \\ Paris")
    recorder = Recorder()
    server = await start(pki, recorder, mtls=True, allowed_subjects=[name])
    try:
        ctx = client_ssl_context(pki.cafile, cert, key)
        async with MLLPClient("127.0.0.1", server.port, ssl_context=ctx) as client:
            assert await client.send(b"x") == b"ACK|x"
        assert recorder.peers[0].tls_subject == subject_of(cert)
        assert "\\#Lab \\\"A\\\"\\, Inc\\+Co\\; \\<x\\>\\ " in subject_of(cert)
    finally:
        await server.close()


async def test_silent_client_on_tls_listener_times_out_and_close_is_prompt(pki: Pki) -> None:
    server = await start(pki, Recorder(), mtls=False, idle_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # handshake timeout follows idle_timeout
        await wait_until(lambda: server.stats.tls_handshake_failed == 1)
        writer.close()
        # A client stuck before its handshake does not hold up shutdown.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await wait_until(lambda: server.stats.connections_open == 1)
    finally:
        async with asyncio.timeout(5):
            await server.close(grace=5.0)
    assert server.stats.connections_open == 0
    writer.close()
