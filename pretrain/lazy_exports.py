"""Lazy package namespaces: a package ``__init__`` names what it offers and where it lives, and the
submodule is imported on first use (huggingface_hub does the same), so importing a package costs
nothing until a heavy name is touched."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps each submodule to the public names
    it provides; any other submodule is reachable as an attribute too (``pretrain.pretraining``)."""
    home = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in home:
            return getattr(importlib.import_module(f".{home[name]}", package), name)
        try:
            return importlib.import_module(f".{name}", package)
        except ModuleNotFoundError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
