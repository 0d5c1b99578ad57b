"""`parcours send`: a sender for integrators rehearsing a feed, and for our own tests."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path

from connectors.mllp.client import MLLPClient
from connectors.mllp.errors import MLLPError, MLLPTimeout
from connectors.mllp.tls import client_ssl_context
from engine.cli.errors import CommandError
from transformers.hl7.ack import read_ack
from transformers.hl7.batch import split_messages
from transformers.hl7.header import HeaderError, read_header

ER_SU_WAIT_S = 2.0

NOT_ACKED = "not acknowledged (an ACK)"
OK_CODES = {"AA", "CA", "NE", "no reply (ER)", NOT_ACKED}


async def _send_one(client: MLLPClient, raw: bytes) -> tuple[str, str, str]:
    """Honour the message's own MSH-15 (HL7 v2.5.1 table 0155): with NE no ACK will come,
    with ER silence means success, with SU silence means an error."""
    try:
        header = read_header(raw)
    except HeaderError:
        accept_ack, is_ack = "", False
    else:
        accept_ack, is_ack = header.accept_ack_type, header.message_type == "ACK"
    if is_ack:
        # HL7 v2.5.1 §2.9: an acknowledgment is never acknowledged itself (that would loop),
        # so nothing is waited for; the connection is closed after it so that a reply a
        # peer sends anyway cannot be read as the answer to the next message.
        await client.send_no_reply(raw)
        await client.close()
        return NOT_ACKED, "", ""
    if accept_ack == "NE":
        await client.send_no_reply(raw)
        return "NE", "", ""
    if accept_ack in ("ER", "SU"):
        try:
            reply = await asyncio.wait_for(client.send(raw), ER_SU_WAIT_S)
        except (TimeoutError, MLLPTimeout):
            await client.close()  # the late reply, if any, must not be read as the next one
            return ("no reply (ER)", "", "") if accept_ack == "ER" else ("no reply (SU)", "", "")
        return read_ack(reply)
    return read_ack(await client.send(raw))


def _is_ack(raw: bytes) -> bool:
    try:
        return read_header(raw).message_type == "ACK"
    except HeaderError:
        return False


async def send_files(args: argparse.Namespace) -> int:
    messages: list[tuple[str, bytes]] = []
    acks = 0
    for name in args.files:
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"{name}: cannot read: {exc.strerror}", code=2) from None
        batch = split_messages(data)
        if not batch.messages:
            raise CommandError(f"{name}: no HL7 message (no MSH segment)", code=2)
        messages += [(name, m) for m in batch.messages]
        acks += sum(1 for m in batch.messages if _is_ack(m))
    if acks:
        print(f"{acks} of the {len(messages)} message(s) are ACKs: sent without waiting for a "
              "reply, since acknowledgments are not acknowledged (HL7 v2.5.1 §2.9)",
              file=sys.stderr)
    ctx = None
    if args.tls_ca:
        ctx = client_ssl_context(args.tls_ca, certfile=args.tls_cert, keyfile=args.tls_key)
    codes: Counter[str] = Counter()
    failures: list[str] = []
    progress = None
    if not args.quiet and len(messages) > 1 and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=len(messages), unit="msg", file=sys.stderr)
    client = MLLPClient(args.host, args.port, ssl_context=ctx, ack_timeout=args.timeout)
    try:
        for name, raw in messages:
            try:
                code, control_id, text = await _send_one(client, raw)
            except (MLLPError, ValueError) as exc:
                code, control_id, text = "ERROR", "", str(exc)
            codes[code] += 1
            if code not in OK_CODES:
                failures.append(f"{name}: {code} {control_id} {text}".rstrip())
            if progress:
                progress.update(1)
    finally:
        await client.close()
    if progress:
        progress.close()
    for line in failures[:50]:
        print(line)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(codes.items()))
    print(f"sent {len(messages)} message(s): {summary}")
    return 0 if not failures else 1
