"""Build a destination from its routes.yaml entry. Timeline and DMP register here too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Destination

Factory = Callable[[str, dict[str, Any]], Destination]
_FACTORIES: dict[str, Factory] = {}


def register(type_name: str, factory: Factory) -> None:
    _FACTORIES[type_name] = factory


def build_destination(name: str, cfg: dict[str, Any]) -> Destination:
    if not _FACTORIES:
        _register_builtin()
    try:
        factory = _FACTORIES[cfg["type"]]
    except KeyError:
        msg = f"destination {name!r}: no implementation for type {cfg['type']!r}"
        raise ValueError(msg) from None
    return factory(name, cfg)


def _register_builtin() -> None:
    from .amqp import AMQPDestination
    from .dmp import DMPDestination
    from .file import FileDestination
    from .http import HTTPDestination
    from .mllp import MLLPDestination
    from .null import NullDestination

    for cls in (AMQPDestination, DMPDestination, FileDestination, HTTPDestination,
                MLLPDestination, NullDestination):
        _FACTORIES.setdefault(cls.type, cls)  # type: ignore[arg-type]
