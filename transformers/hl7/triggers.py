"""Which trigger events (MSH-9.2, HL7 table 0003) belong to which message type (MSH-9.1).

Intake checks a message's trigger against its type before answering: a feed that writes
`ADT^ADT^A03` (the trigger in the third component) would otherwise be acknowledged AA and
then make nothing, since every event transformer works from the trigger. A type that is not
listed here is not checked; a trigger that starts with Z is a site-defined event (HL7 v2.5.1
§2.8.1 "Z" codes; IHE PAM France uses Z99) and is always allowed.

Sources: HL7 v2.5.1 table 0003 with the event definitions of chapter 2 (ACK), 3 (ADT),
4 (ORM, OML, ORL, RDE, RDS, OMG), 6 (BAR, DFT), 7 (ORU, OUL), 9 (MDM), 10 (SIU), 11 (REF),
12 (PPR) and 4A (VXU), plus the later events IHE LAB/LTW use (R40/R41 alerts, OML O33/O35/O39).
"""

from __future__ import annotations


def _range(prefix: str, first: int, last: int) -> frozenset[str]:
    return frozenset(f"{prefix}{n:02d}" for n in range(first, last + 1))


# HL7 v2.5.1 §3.3: ADT A01-A62 (some withdrawn, still sent by older systems).
EVENTS_BY_TYPE: dict[str, frozenset[str]] = {
    "ADT": _range("A", 1, 62),
    "ORU": frozenset({"R01", "R30", "R31", "R32", "R40", "R41", "W01"}),
    "OUL": frozenset({"R21", "R22", "R23", "R24"}),
    "ORM": frozenset({"O01"}),
    "OML": frozenset({"O21", "O33", "O35", "O39"}),
    "ORL": frozenset({"O22", "O34", "O36", "O40"}),
    "OMG": frozenset({"O19"}),
    "RDE": frozenset({"O01", "O11", "O25"}),
    "RDS": frozenset({"O01", "O13"}),
    "MDM": _range("T", 1, 11),
    "SIU": _range("S", 12, 26),
    "REF": frozenset({"I12", "I13", "I14", "I15"}),
    "BAR": frozenset({"P01", "P02", "P05", "P06", "P10", "P12"}),
    "DFT": frozenset({"P03", "P11"}),
    "PPR": frozenset({"PC1", "PC2", "PC3"}),
    "VXU": frozenset({"V04"}),
}


def trigger_problem(message_type: str, trigger: str) -> str | None:
    """None when `trigger` is an event of `message_type` (or either is not checked); else a
    sentence for the sender saying what is wrong (HL7 table 0357 code 201)."""
    events = EVENTS_BY_TYPE.get(message_type)
    if events is None or not trigger or trigger in events or trigger.startswith("Z"):
        return None
    return (f"trigger event {trigger!r} (MSH-9.2) is not an event of message type "
            f"{message_type} (HL7 table 0003)")
