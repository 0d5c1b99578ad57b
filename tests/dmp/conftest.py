"""DMP test fixtures: certificates made here, a dmp-sim on a real TLS socket."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
TRANS = CORPUS / "hl7v2/ans/Vague_2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(k: rsa.RSAPrivateKey) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def _cert(subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name | None = None,
          issuer_key: rsa.RSAPrivateKey | None = None, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                      x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    sign_cert: Path
    sign_key: Path
    other_sign_cert: Path


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("Parcours test CA", ca_key, ca=True)
    out: dict[str, Path] = {}

    def write(name: str, data: bytes) -> Path:
        p = d / name
        p.write_bytes(data)
        return p

    out["ca"] = write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for label, server in (("server", True), ("client", False)):
        k = _key()
        c = _cert(f"dmp-{label}", k, ca.subject, ca_key, server=server)
        out[f"{label}_cert"] = write(f"{label}.pem", c.public_bytes(serialization.Encoding.PEM))
        out[f"{label}_key"] = write(f"{label}.key", _pem_key(k))
    sk = _key()
    sc = _cert("Parcours cachet structure", sk)
    out["sign_cert"] = write("sign.pem", sc.public_bytes(serialization.Encoding.PEM))
    out["sign_key"] = write("sign.key", _pem_key(sk))
    ok = _key()
    out["other_sign_cert"] = write("other.pem", _cert("Intrus", ok).public_bytes(
        serialization.Encoding.PEM))
    return Certs(**out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningSim:
    url: str
    sim: object  # connectors.dmp.simulator.Simulator


@pytest.fixture(scope="session")
def dmp_server(certs: Certs) -> Iterator[RunningSim]:
    """dmp-sim over mutual TLS on 127.0.0.1, checking the VIHF signature."""
    import ssl

    import uvicorn

    from connectors.dmp.simulator import Simulator, SimulatorState, create_app

    sim = Simulator(SimulatorState(trusted_cert=certs.sign_cert.read_bytes()))
    port = _free_port()
    config = uvicorn.Config(create_app(sim), host="127.0.0.1", port=port, log_level="warning",
                            ssl_certfile=str(certs.server_cert), ssl_keyfile=str(certs.server_key),
                            ssl_ca_certs=str(certs.ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("dmp-sim did not start")
        time.sleep(0.05)
    yield RunningSim(f"https://127.0.0.1:{port}/dmp", sim)
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def sim(dmp_server: RunningSim, certs: Certs) -> object:
    """The running simulator, emptied and reset for each test."""
    from connectors.dmp.simulator import SimulatorState

    s = dmp_server.sim
    s.state = SimulatorState(trusted_cert=certs.sign_cert.read_bytes())  # type: ignore[attr-defined]
    return s


def dmp_options(url: str, certs: Certs, **extra: object) -> dict[str, object]:
    return {"url": url,
            "tls": {"ca": str(certs.ca), "cert": str(certs.client_cert),
                    "key": str(certs.client_key)},
            "signing": {"cert": str(certs.sign_cert), "key": str(certs.sign_key)},
            "identity": {"name_id": "parcours-test", "subject_name": "Parcours, tests",
                         "structure_id": "1120459876"},
            **extra}


ORU_LAB = Path(__file__).resolve().parents[1] / "loinc/data/oru_cerballiance-idf-demo_12.hl7"


def lab_oru_with_ins(status: str = "F") -> str:
    text = ORU_LAB.read_text(encoding="utf-8")
    text = text.replace(
        "PID|1||DEMO000123^^^PARCOURS-DEMO^PI",
        "PID|1||DEMO000123^^^PARCOURS-DEMO&1.2.250.1.999.1&ISO^PI~"
        "279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS")
    # One code the lab's mapping does not know: kept as a translation, never dropped.
    text = text.replace("OBX|12|NM|CT^Cholestérol total^L||5.17|mmol/L|<5.17||||F",
                        "OBX|12|NM|ZZLOC^Examen local^L||5.17|mmol/L|<5.17|H|||F")
    return text.replace("||||F|||", f"||||{status}|||")


@pytest.fixture
def crbio_exchange() -> object:
    from transformers.exchange import Exchange
    from transformers.hl7.reader import parse_message

    text = lab_oru_with_ins()
    return Exchange(7, "lab", text.encode(), text, parse_message(text),
                    headers={"message_type": "ORU"})
