"""Micro-benchmark: cost per ACK, and cost of reading MSH + PID-3, on the 12-OBX ORU of
bench/intake.py.

    .venv/bin/python bench/ack.py [--number 2000]

ACK:   Parcours  transformers.hl7.header.read_header + transformers.hl7.ack.build_ack_bytes
       python-hl7  hl7.parse(whole message) + message.create_ack() + str()
Read:  python-hl7 hl7.parse, hl7apy parser.parse_message (find_groups=False, tolerant), and
       the lazy reader transformers.hl7.reader.Message.parse, each then reading MSH-10 and PID-3
       (the first identifier).
Best of 5 repeats, in microseconds per operation.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hl7  # noqa: E402
from hl7apy.parser import parse_message as hl7apy_parse  # noqa: E402
from intake import machine, oru  # noqa: E402

from transformers.hl7.ack import build_ack_bytes  # noqa: E402
from transformers.hl7.header import read_header  # noqa: E402
from transformers.hl7.reader import Message  # noqa: E402

RAW = oru("BENCH-0001")
TEXT = RAW.decode("utf-8")


def parcours_ack() -> bytes:
    header = read_header(RAW)
    return build_ack_bytes(header, "AA", charset="utf-8", control_id="P0000000001")


def python_hl7_ack() -> bytes:
    message = hl7.parse(TEXT)
    return str(message.create_ack("AA", message_id="P0000000001")).encode("utf-8")


def python_hl7_read() -> tuple[str, str]:
    m = hl7.parse(TEXT)
    return str(m.segment("MSH")[10]), str(m.segment("PID")[3][0][0])


def hl7apy_read() -> tuple[str, str]:
    m = hl7apy_parse(TEXT.replace("\n", "\r"), find_groups=False, validation_level=2)
    return m.msh.msh_10.value, m.pid.pid_3[0].cx_1.value


def lazy_read() -> tuple[str, str]:
    m = Message.parse(TEXT)
    return m.get("MSH-10"), m.get("PID-3.1")


def per_op(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=2000, help="calls per repeat [2000]")
    n = ap.parse_args().number

    for name, fn in (("python-hl7", python_hl7_read), ("hl7apy", hl7apy_read),
                     ("lazy reader", lazy_read)):
        got = fn()
        assert got == ("BENCH-0001", "0123456789"), (name, got)
    assert b"MSA|AA|BENCH-0001" in parcours_ack() and b"MSA|AA|BENCH-0001" in python_hl7_ack()

    print(f"# {machine()}; message {len(RAW)} bytes, {TEXT.count(chr(13))} segments",
          file=sys.stderr)
    acks = [("Parcours read_header + build_ack_bytes", per_op(parcours_ack, n)),
            ("python-hl7 parse + create_ack", per_op(python_hl7_ack, n))]
    reads = [("python-hl7 hl7.parse", per_op(python_hl7_read, n)),
             ("hl7apy parse_message (find_groups=False)", per_op(hl7apy_read, max(1, n // 50))),
             ("Parcours lazy reader", per_op(lazy_read, n))]
    print("| ACK for one ORU^R01 (12 OBX) | µs per message | relative |")
    print("|---|---:|---:|")
    for name, us in acks:
        print(f"| {name} | {us:,.1f} | {us / acks[0][1]:.1f}× |")
    print()
    print("| read MSH-10 + PID-3 | µs per message | relative |")
    print("|---|---:|---:|")
    for name, us in reads:
        print(f"| {name} | {us:,.1f} | {us / reads[-1][1]:.1f}× |")


if __name__ == "__main__":
    main()
