"""Long-sequence MAE: architectures (:mod:`.archs`), models, block masking, and the pretraining
engine (GPU/CPU DDP and TPU) with the training skeleton the fine-tuning bridges share.

Names are handed on lazily: ``import pretrain`` (or ``pretrain.errors``) costs no torch import.
"""
from .lazy_exports import lazy_getattr

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
__getattr__ = lazy_getattr(__name__, _EXPORTS)
