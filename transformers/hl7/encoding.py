"""Delimiters of one message, read from MSH-1 and MSH-2 (HL7 v2.5.1 §2.5.4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""  # v2.7+ fifth encoding character (§2.5.5.2), usually '#'

    @property
    def msh2(self) -> str:
        """MSH-2 as it must be echoed in an ACK: same encoding characters as received."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_ENCODING = Encoding()
