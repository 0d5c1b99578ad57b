"""Throughput of LOINC normalisation: 12-OBX ORU^R01 messages normalised per second, one core.

    .venv/bin/python bench/normalise.py [--seconds 5]

Parses each sample message with the transformer's ER7 reader and normalises its OBX (mapping
lookup, UCUM normalisation, conversion, range and flag), cycling through the three demo
laboratories. The goal in issue #4 is >= 5,000 messages/s. Baseline in the same run: python-hl7
(`hl7.parse`) parsing the same messages, without doing anything with them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loinc.catalogue import load_catalogue  # noqa: E402
from loinc.units import conversion_factor, normalise_unit  # noqa: E402
from mappings.loader import load_mappings  # noqa: E402
from transformers.normalise import normalise_observations, observations_from_oru  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    catalogue = load_catalogue()
    mappings = load_mappings(ROOT / "mappings", catalogue=catalogue)
    messages = [
        p.read_text(encoding="utf-8")
        for p in sorted((ROOT / "tests/loinc/data").glob("oru_*_12.hl7"))
    ]

    start = time.perf_counter()
    normalise_unit.cache_clear()
    conversion_factor.cache_clear()
    cold = conversion_factor("mg/dL", "umol/L", 113.12)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(10000):
        conversion_factor("mg/dL", "umol/L", 113.12)
    cached = (time.perf_counter() - start) / 10000
    print(
        f"conversion factor: first {first * 1e3:.2f} ms (parse + pint), "
        f"cached {cached * 1e9:.0f} ns ({cold})"
    )

    import hl7

    def parcours(text: str) -> int:
        sender, obs = observations_from_oru(text)
        result = normalise_observations(obs, sender=sender, catalogue=catalogue,
                                        mappings=mappings)
        return len(result.observations)

    def python_hl7(text: str) -> int:
        return len(hl7.parse(text.replace("\n", "\r")).segments("OBX"))

    rates = {}
    for name, fn in (("python-hl7 hl7.parse only (baseline)", python_hl7),
                     ("Parcours read + normalise", parcours)):
        rates[name] = measure(name, fn, messages, args.seconds)
    base, ours = rates.values()
    print(f"normalisation throughput / python-hl7 parse throughput: {ours / base:.2f}")


def measure(name: str, fn: Callable[[str], int], messages: list[str], seconds: float) -> float:
    for text in messages:  # warm the caches once
        fn(text)
    count = obx = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for text in messages:
            obx += fn(text)
            count += 1
    elapsed = time.perf_counter() - start
    print(
        f"{name}: {count} messages ({obx} OBX) in {elapsed:.2f} s: "
        f"{count / elapsed:,.0f} messages/s, {obx / elapsed:,.0f} OBX/s, "
        f"{elapsed / obx * 1e6:.1f} µs per OBX"
    )
    return count / elapsed


if __name__ == "__main__":
    main()
