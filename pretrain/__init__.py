"""Long-sequence MAE: architectures (:mod:`.archs`), models, block masking, and the pretraining
engine (GPU/CPU DDP and TPU) with the training skeleton the fine-tuning bridges share.

Names are handed on lazily: ``import pretrain`` (or ``pretrain.errors``) costs no torch import.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LsmaeError": "errors",
    "list_models": "archs",
    "model_config": "archs",
    "resolve_model_name": "archs",
    "MaskedAutoencoderViT": "models_mae",
    "create_model": "models_mae",
    "block_mask_indices": "masking",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    try:  # a submodule reached as an attribute (``pretrain.engine``)
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
