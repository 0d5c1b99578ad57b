"""ORU → CR-BIO CDA (`transformers.cda.to_crbio.to_crbio`), with the placeholder settings.

A bug is any exception other than `NoINS` (no INS: the DMP cannot index the document) and
`Er7Error` (the ORU cannot be read for normalisation), or a document that the project's own
safe XML parser refuses to read back.
"""

from __future__ import annotations

from fuzz import seeds
from fuzz.harness import Harness, check
from fuzz.targets.oru_events import exchange_for
from safexml import parse
from transformers.cda.to_crbio import NoINS
from transformers.lab.er7 import Er7Error


def target(data: bytes) -> None:
    from transformers.cda.to_crbio import to_crbio

    out = to_crbio(exchange_for(data))
    if out is not None and isinstance(out.body, bytes):
        root = parse(out.body)
        check(root.tag == "{urn:hl7-org:v3}ClinicalDocument", "CR-BIO is not a CDA")


# 4 KiB holds an MSH, a PID and a dozen OBX: every branch of the transformer is per segment,
# so longer inputs repeat the same paths and only divide the fuzzer's speed.
HARNESS = Harness("oru_crbio", target, (NoINS, Er7Error), seeds.oru_messages, max_len=4096)
