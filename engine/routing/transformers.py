"""Resolve transformer names from routes.yaml: a built-in name, or `module:function`.

User modules are looked up in `transformers/` (e.g. `transformers.mine:fix_pid`) or in the
folders listed under `transformer_paths` in routes.yaml.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers.builtin import BUILTIN


class TransformerNotFound(LookupError):
    pass


class Registry:
    def __init__(self, paths: tuple[str, ...] = (), base: Path | None = None) -> None:
        self.extra: dict[str, Callable[..., Any]] = {}
        for p in paths:
            folder = (base / p) if base and not Path(p).is_absolute() else Path(p)
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        self.extra[name] = fn

    def resolve(self, name: str) -> Callable[..., Any]:
        if name in self.extra:
            return self.extra[name]
        if name in BUILTIN:
            return BUILTIN[name]
        if ":" in name:
            module_name, _, attr = name.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise TransformerNotFound(f"cannot import module {module_name!r}: {exc}") from None
            fn = getattr(module, attr, None)
            if not callable(fn):
                raise TransformerNotFound(f"{module_name!r} has no callable {attr!r}")
            return fn  # type: ignore[no-any-return]
        known = ", ".join(sorted({*BUILTIN, *self.extra}))
        raise TransformerNotFound(f"unknown transformer {name!r} (built-in: {known}; or "
                                  "write module:function)")

    def exists(self, name: str) -> bool:
        try:
            self.resolve(name)
        except TransformerNotFound:
            return False
        return True
