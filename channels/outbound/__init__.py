"""Outbound destinations: each turns one outbox item into an Outcome.

A destination owns the translation from its transport's answer to delivered / retry / dead
(the policy knobs an operator sets in routes.yaml, e.g. `on_ae`); retry timing, ordering
and dead-lettering belong to the engine's delivery runner.
"""

from .base import Destination, OutboundItem, Outcome
from .factory import build_destination

__all__ = ["Destination", "OutboundItem", "Outcome", "build_destination"]
