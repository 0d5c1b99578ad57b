"""The parsed tree of a stored HL7 v2 message, for the message page.

Names come from hl7apy's definitions for the message's own version (MSH-12), because an
operator reads "PID-3 Patient identifier list" faster than "PID-3"; a segment or field that
hl7apy does not know (Z segments of a national extension, fields added by a later version)
falls back to its position. The French PAM extension's ZBE is named from IHE PAM-FR §ZBE.

The split itself is plain (HL7 v2.5.1 §2.5: segments by CR, fields by MSH-1, repetitions,
components): values are shown as they arrived, escapes included, so the operator sees the
bytes the sender sent. Autoescaping in the template makes them safe to display.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from transformers.hl7.reader import HL7ReadError, encoding_from_msh, normalise_separators

_DEFAULT_VERSION = "2.5"

# IHE PAM French extension (PAM-FR), segment ZBE "movement": hl7apy has no Z segments.
_ZBE = {1: "Movement ID", 2: "Start of movement date/time", 3: "End of movement date/time",
        4: "Action on the movement (INSERT/UPDATE/CANCEL)", 5: "Historic movement indicator",
        6: "Original trigger event code", 7: "Ward of medical responsibility",
        8: "Ward of care responsibility", 9: "Nature of this movement"}

MAX_SEGMENTS = 500  # a page, not a dump: the raw message is shown in full above the tree


@dataclass
class Component:
    position: str
    name: str
    value: str


@dataclass
class Field:
    position: str
    name: str
    datatype: str
    value: str
    repetitions: list[list[Component]] = field(default_factory=list)


@dataclass
class Segment:
    name: str
    occurrence: int
    description: str
    fields: list[Field] = field(default_factory=list)


def _label(raw_name: str | None) -> str:
    """hl7apy's "PATIENT_IDENTIFIER_LIST" → "Patient identifier list"."""
    if not raw_name:
        return ""
    words = raw_name.replace("_", " ").strip().lower()
    return words[:1].upper() + words[1:]


def library_version(version: str | None) -> str:
    """MSH-12 → an hl7apy library: "2.5^FRA^2.11" → "2.5"; unknown versions → 2.5."""
    import hl7apy

    v = (version or "").split("^", 1)[0].strip()
    return v if v in hl7apy.SUPPORTED_LIBRARIES else _DEFAULT_VERSION


@lru_cache(maxsize=512)
def segment_definition(segment: str, version: str) -> dict[int, tuple[str, str, tuple[str, ...]]]:
    """Field position → (name, datatype, component names) for one segment in one version."""
    if segment == "ZBE":
        return {i: (n, "", ()) for i, n in _ZBE.items()}
    from hl7apy import load_reference
    from hl7apy.exceptions import ChildNotFound

    try:
        ref = load_reference(segment, "Segment", version)
    except (ChildNotFound, KeyError, ValueError):
        return {}
    out: dict[int, tuple[str, str, tuple[str, ...]]] = {}
    for child in ref[1]:
        child_name, spec = child[0], child[1]
        try:
            pos = int(child_name.rsplit("_", 1)[1])
        except (IndexError, ValueError):
            continue
        datatype, long_name = spec[2], spec[3]
        comps: tuple[str, ...] = ()
        if spec[0] == "sequence" and isinstance(spec[1], tuple):
            comps = tuple(_label(c[1][3]) for c in spec[1])
        out[pos] = (_label(long_name), datatype or "", comps)
    return out


@lru_cache(maxsize=256)
def segment_description(segment: str) -> str:
    known = {"MSH": "Message header", "EVN": "Event type", "PID": "Patient identification",
             "PD1": "Patient additional demographic", "PV1": "Patient visit",
             "PV2": "Patient visit - additional information", "OBR": "Observation request",
             "OBX": "Observation/result", "ORC": "Common order", "NTE": "Notes and comments",
             "MSA": "Message acknowledgment", "ERR": "Error", "MRG": "Merge patient information",
             "ZBE": "Movement (IHE PAM-FR)", "ZFA": "DMP status (IHE PAM-FR)",
             "SCH": "Scheduling activity information", "TXA": "Transcription document header",
             "SPM": "Specimen", "TQ1": "Timing/quantity", "AIS": "Appointment information",
             "NK1": "Next of kin", "IN1": "Insurance", "AL1": "Allergy", "DG1": "Diagnosis",
             "ROL": "Role", "FHS": "File header", "BHS": "Batch header"}
    return known.get(segment, "")


def parse_tree(text: str, version: str | None) -> list[Segment]:
    """Split a message into named segments, fields, repetitions and components.

    Raises HL7ReadError when MSH-1/MSH-2 cannot be read: the page then shows the raw text
    only, with the reason.
    """
    text = normalise_separators(text).strip("\r")
    enc = encoding_from_msh(text)
    lib = library_version(version)
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    for line in text.split("\r")[:MAX_SEGMENTS]:
        if not line.strip():
            continue
        parts = line.split(enc.field)
        name = parts[0][:3]
        counts[name] = counts.get(name, 0) + 1
        seg = Segment(name, counts[name], segment_description(name))
        definition = segment_definition(name, lib) if name.isalnum() else {}
        if name == "MSH":
            # MSH-1 is the field separator itself; MSH-2 the encoding characters.
            values = [enc.field, *parts[1:]]
        else:
            values = parts[1:]
        for i, value in enumerate(values, start=1):
            if value == "":
                continue
            fname, dtype, comp_names = definition.get(i, ("", "", ()))
            f = Field(f"{name}-{i}", fname, dtype, value)
            if not (name == "MSH" and i <= 2):
                for rep in value.split(enc.repetition):
                    comps = rep.split(enc.component)
                    if len(comps) > 1:
                        f.repetitions.append([
                            Component(f"{name}-{i}.{j}",
                                      comp_names[j - 1] if j <= len(comp_names) else "", c)
                            for j, c in enumerate(comps, start=1) if c != ""])
            seg.fields.append(f)
        segments.append(seg)
    return segments


def try_parse_tree(text: str, version: str | None) -> tuple[list[Segment], str | None]:
    """The tree, or an empty one and the reason it could not be built."""
    try:
        return parse_tree(text, version), None
    except HL7ReadError as exc:
        return [], str(exc)
    except Exception as exc:  # a definition lookup must never break the message page
        return [], f"could not split the message: {type(exc).__name__}"


def as_dict(segments: list[Segment]) -> list[dict[str, Any]]:
    """For tests and JSON: the tree as plain data."""
    from dataclasses import asdict

    return [asdict(s) for s in segments]
