"""The observation types the normalisation transformer reads and writes (plain data).

They are independent of any HL7 parser so that the transformer can be fed by the shared lazy
reader, by ``er7.observations_from_oru`` or by a test, alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class RawObservation:
    """One OBX as received, fields already unescaped (HL7 v2.5.1 chapter 7, OBX)."""

    set_id: str = ""
    value_type: str = ""  # OBX-2: NM, SN, ST, FT, CE, CWE, TX, ED...
    code: str = ""  # OBX-3.1
    text: str = ""  # OBX-3.2
    coding_system: str = ""  # OBX-3.3
    alt_code: str = ""  # OBX-3.4
    alt_text: str = ""  # OBX-3.5
    alt_coding_system: str = ""  # OBX-3.6
    value: str = ""  # OBX-5, first repetition, components joined by '^'
    units: str = ""  # OBX-6.1 (or OBX-6.2 when .1 is empty)
    reference_range: str = ""  # OBX-7
    abnormal_flags: str = ""  # OBX-8
    result_status: str = ""  # OBX-11
    observed_at: str = ""  # OBX-14
    performing_lab: str = ""  # OBX-23.1 (organisation name) or OBX-15.1


@dataclass(frozen=True, slots=True)
class Original:
    """What the laboratory sent, kept for provenance next to the canonical result."""

    code: str
    coding_system: str
    text: str
    value: str
    unit: str
    reference_range: str


@dataclass(frozen=True, slots=True)
class NormalisedObservation:
    """One OBX after normalisation.

    ``outcome`` says what happened: ``normalised`` (LOINC + canonical unit), ``coded`` (LOINC
    resolved, value kept as sent: text, coded or ordinal results), ``as_received`` (kept as
    received; ``reason`` says why) or ``no_value`` (status X/D: nothing to convert).
    ``action`` is what the receiver must do with a previous result (OBX-11, HL7 table 0085).
    """

    set_id: str
    outcome: str
    action: str
    status: str
    loinc: str | None
    display: str
    display_fr: str
    analyte: tuple[str, str] | None
    value_type: str
    value: Decimal | None
    value_text: str
    comparator: str
    unit: str
    reference_low: Decimal | None
    reference_high: Decimal | None
    reference_text: str
    abnormal_flag: str
    abnormal_flag_source: str  # "received", "derived" or ""
    performing_lab: str
    observed_at: str
    original: Original
    reason: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BacklogEntry:
    """A code that could not be normalised, for an operator to map (``parcours mappings``)."""

    sender: str
    performing_lab: str
    code: str
    coding_system: str
    text: str
    unit: str
    example_value: str
    reason: str


@dataclass(slots=True)
class NormalisationResult:
    """All observations of one message, plus the backlog entries they raised."""

    observations: list[NormalisedObservation] = field(default_factory=list)
    backlog: list[BacklogEntry] = field(default_factory=list)

    @property
    def unmapped(self) -> list[NormalisedObservation]:
        return [o for o in self.observations if o.outcome == "as_received"]
