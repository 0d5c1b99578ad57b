"""Hostile XML is refused: by the CDA parser, by the destination, by dmp-sim."""

from __future__ import annotations

import base64

import pytest

from channels.outbound.base import OutboundItem
from connectors.dmp import iti41
from connectors.dmp.simulator import Simulator
from safexml import UnsafeXML, parse

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<ClinicalDocument xmlns="urn:hl7-org:v3">&x;</ClinicalDocument>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<lolz>&lol3;</lolz>"""


@pytest.mark.parametrize("data", [XXE, LAUGHS], ids=["xxe", "billion-laughs"])
def test_parser_refuses(data: bytes) -> None:
    with pytest.raises(UnsafeXML):
        parse(data)


@pytest.mark.parametrize("data", [XXE, LAUGHS], ids=["xxe", "billion-laughs"])
def test_simulator_answers_a_sender_fault(data: bytes) -> None:
    status, body, ctype = Simulator().handle(data, "application/soap+xml")
    assert status == 400
    assert "refusé" in (iti41.fault_reason(iti41.read_message(body, ctype).body) or "")


def test_simulator_refuses_hostile_mtom_root() -> None:
    body, ctype = b"", ""
    env_bytes = XXE
    boundary = "b1"
    body = (f"--{boundary}\r\nContent-Type: application/xop+xml\r\nContent-ID: <r>\r\n\r\n"
            .encode() + env_bytes + f"\r\n--{boundary}--\r\n".encode())
    ctype = f'multipart/related; boundary="{boundary}"; start="<r>"'
    status, _, _ = Simulator().handle(body, ctype)
    assert status == 400


def test_simulator_refuses_oversized() -> None:
    from connectors.dmp import simulator

    big = b"<a>" + b"x" * (simulator.MAX_REQUEST_BYTES + 1) + b"</a>"
    status, _, _ = Simulator().handle(big, "application/soap+xml")
    assert status == 400


def test_simulator_refuses_missing_action() -> None:
    from lxml import etree

    env = iti41.envelope("urn:nope", "x", etree.Element("x"))
    status, body, ctype = Simulator().handle(etree.tostring(env), "application/soap+xml")
    assert status == 400 and "Action" in (iti41.fault_reason(
        iti41.read_message(body, ctype).body) or "")


async def test_destination_refuses_hostile_cda(tmp_path: object) -> None:
    from channels.outbound.dmp import DMPDestination

    dest = DMPDestination("dmp", {"type": "dmp", "options": {"url": "https://127.0.0.1:1/dmp"}})
    try:
        for payload, ctype in ((XXE, "application/cda+xml"), (
                b"MSH|^~\\&|A|B|C|D|20250101||MDM^T02|1|P|2.5\rOBX|1|ED|18748-4^CR^LN||^TEXT^XML"
                b"^Base64^" + base64.b64encode(LAUGHS) + b"||||||F|\r", "application/hl7-v2")):
            out = await dest.send(OutboundItem(1, 1, "r", "dmp", payload, ctype, None, 1, "k"))
            assert out.kind == "dead" and "DOCTYPE" in out.detail
    finally:
        await dest.close()
