"""The checkpoint zoo: registry of released weights, verified downloads, local cache.

Names are handed on lazily: ``import zoo`` and the registry cost no torch import; loading or
checking weights imports it when it happens.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "VerificationError": "checkpoint",
    "check_structure": "checkpoint",
    "describe": "checkpoint",
    "load_checkpoint": "checkpoint",
    "cache_root": "settings",
    "fetch": "cache",
    "load_state_dict": "cache",
    "load_model": "models",
    "Entry": "registry",
    "entries": "registry",
    "get_entry": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    try:  # a submodule reached as an attribute (``zoo.cache``)
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
