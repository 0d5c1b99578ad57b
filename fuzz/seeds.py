"""Seed inputs, read from the third-party corpus at run time.

Nothing from `../shared/corpus` is copied into the repository (some of its folders carry no
licence file): `make fuzz` writes the seeds under `var/fuzz/seeds/` when it starts. Without
the corpus the harnesses still start, from the few hand-written seeds given here, which are
ours.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("PARCOURS_CORPUS", ROOT.parent / "shared" / "corpus"))

# Our own minimal messages, so a harness has something to mutate without the corpus.
MINIMAL_ORU = (
    b"MSH|^~\\&|LAB|FAC|PARCOURS|GHT|20240102030405||ORU^R01^ORU_R01|C1|P|2.5.1|||AL|NE||"
    b"UNICODE UTF-8\r"
    b"PID|||123^^^FAC&1.2.3&ISO^PI~2750599999999^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO"
    b"^INS||DOE^JOHN||19800101|M\r"
    b"OBR|1|P1|F1|2345-7^Glucose^LN|||20240102030000\r"
    b"OBX|1|NM|GLU^Glucose^L||5.5|mmol/L|3.9-6.1|N|||F\r"
)
MINIMAL_CDA = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3" extension="d1"/>'
    b'<code code="11502-2" codeSystem="2.16.840.1.113883.6.1"/><title>CR</title>'
    b'<effectiveTime value="20240102"/><confidentialityCode code="N"/>'
    b'<recordTarget><patientRole><id root="1.2.250.1.213.1.4.10" extension="2750599999999"/>'
    b"</patientRole></recordTarget></ClinicalDocument>"
)


def _files(folder: str, suffixes: tuple[str, ...]) -> Iterator[Path]:
    base = CORPUS / folder
    if not base.is_dir():
        return
    for path in sorted(base.rglob("*")):
        if path.is_file() and path.suffix.lower() in suffixes:
            yield path


def hl7_messages(max_bytes: int = 64 * 1024) -> list[bytes]:
    """Every HL7 v2 message of the corpus (small enough to mutate), and our minimal ORU."""
    out = [MINIMAL_ORU]
    for path in _files("hl7v2", (".hl7", ".er7")):
        data = path.read_bytes()
        if len(data) <= max_bytes:
            out.append(data)
    return out


def oru_messages(max_bytes: int = 64 * 1024) -> list[bytes]:
    return [m for m in hl7_messages(max_bytes) if b"ORU^R01" in m[:512]] or [MINIMAL_ORU]


def mllp_streams() -> list[bytes]:
    """The HL7 messages as MLLP byte streams: one frame, two frames, a frame after noise."""
    out = []
    for msg in hl7_messages(16 * 1024):
        body = msg.replace(b"\x0b", b"").replace(b"\x1c", b"")
        out.append(b"\x0b" + body + b"\x1c\r")
        out.append(b"\x0b" + body + b"\x1c\r\x0b" + body[:100] + b"\x1c")
        out.append(b"noise\r\n\x0b" + body[:200])
    return out


def cda_documents(max_bytes: int = 256 * 1024) -> list[bytes]:
    out = [MINIMAL_CDA]
    for folder in ("cda/ans-examples", "hl7v2/ans"):
        for path in _files(folder, (".xml",)):
            data = path.read_bytes()
            if len(data) <= max_bytes:
                out.append(data)
    return out


def route_files() -> list[bytes]:
    """The shipped routes.yaml without its comment-only lines, and the route files of ours
    in `fuzz/route_seeds/`: one with the optional sections the shipped file only shows in
    comments, and a few of ten lines.

    ruamel.yaml (pure Python) costs time in proportion to the nodes of a document: the
    shipped file has hundreds, so every mutation of it took tens of milliseconds; the small
    files reach the same sections of `engine.config` in a few.
    """
    shipped = (ROOT / "routes.yaml").read_bytes().splitlines(keepends=True)
    code = b"".join(line for line in shipped if line.strip() and not line.lstrip().startswith(b"#"))
    ours = sorted((ROOT / "fuzz" / "route_seeds").glob("*.yaml"))
    return [code, *(p.read_bytes() for p in ours)]


def write_seeds(target: Path, seeds: Iterable[bytes]) -> int:
    """Write each seed once (named by position) into `target`; returns how many."""
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for i, data in enumerate(seeds):
        (target / f"seed-{i:04d}").write_bytes(data)
        count += 1
    return count
